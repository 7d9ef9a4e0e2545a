"""The command line: every subcommand and its options, built group by group.

Every subcommand is listed at once (its name and one-line help, for
``--help``), and its options are built only when it is the command given
(:func:`~secretvault.vault.cli.options.deferred`): ``sign`` builds ``sign``'s
options and imports only ``sign``'s module.  Each ``_add_*`` function adds one
command group; each ``_<command>`` function fills one subcommand and points
it at the function in its group's module that runs it.  ``serve``'s options
are :mod:`secretvault.vault.cli.parser_serve`'s.
"""

from __future__ import annotations

import argparse
from typing import Any

from secretvault.api.paths import SOCKET_ENV, default_socket_path
from secretvault.api.pubkeys import FORMATS
from secretvault.clients.local import KEY_TYPES
from secretvault.vault.cli.errors import PROG
from secretvault.vault.cli.options import (
    Formatter,
    Parser,
    Subcommands,
    Version,
    connection_options,
    deferred,
    describe,
    in_out,
    key_name,
    positive_float,
    positive_int,
    subcommands,
)

TYPES_HELP = ("ed25519 (sign/verify), x25519 (sealed-box decrypt), "
              "xchacha20-poly1305 (encrypt/decrypt), hmac-sha256 (mac/verify-mac)")

EPILOG = f"""\
Every subcommand except serve talks to a running vault: over its Unix socket
(--socket PATH, or ${SOCKET_ENV}) or over TLS (--connect HOST:PORT --ca-cert ...).

examples:
  secretvault serve                                   start a vault on its defaults
  secretvault keys create release --type ed25519      a new signing key
  secretvault sign release --in artifact.tar --out artifact.sig
  secretvault verify release --in artifact.tar --signature artifact.sig
  secretvault keys public release --format pem        for openssl, ssh, JWT libraries
  secretvault stats --watch                           secret memory, memlock, direct map
  eval "$(secretvault ssh-agent)"                     ssh and git sign with the vault's keys

exit status: 0 success; 1 verify/verify-mac found a mismatch; 2 error (one line on stderr)
"""


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole command line.  ``lazy`` (what :func:`~secretvault.vault.cli.main`
    asks for): each subcommand's options are built only if it is the command."""
    parser = Parser(
        prog=PROG,
        description="A key-holding service whose keys live only in Linux secret memory "
        "(memfd_secret). Keys never leave the vault: it signs, verifies, encrypts, decrypts "
        "and MACs in place, and reports what secret memory costs.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action=Version)
    parser.add_argument("--socket", metavar="PATH", default=None,
                        help=f"the vault's Unix socket, for any subcommand (default: "
                        f"${SOCKET_ENV}, else {default_socket_path()})")
    sub = subcommands(parser, "command", PROG, action=Subcommands)
    deferred(sub, "serve", "run the vault server", _serve, lazy=lazy)
    deferred(sub, "keys", "create, list, show, rotate, delete, import keys; export public keys",
             lambda group: _add_keys(group, lazy), lazy=lazy)
    _add_crypto(sub, lazy)
    deferred(sub, "stats", "secret memory accounting, memlock headroom, direct-map splits",
             _stats, lazy=lazy)
    deferred(sub, "ssh-agent", "print the SSH_AUTH_SOCK line for the vault's SSH agent",
             _ssh_agent, lazy=lazy)
    deferred(sub, "model", "the page-by-page, pooled-PMD and PMD-buddy models of secret memory",
             _add_model, lazy=lazy)
    return parser


def _serve(parser: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli.parser_serve import add_serve

    add_serve(parser)


# --- keys ---------------------------------------------------------------------------------


def _add_keys(group: argparse.ArgumentParser, lazy: bool) -> None:
    group.description = ("Manage keys. Key material never leaves the vault: keys are "
                         "generated inside it or imported sealed, and only public keys can "
                         "be read back.")
    ksub = subcommands(group, "keys_command", "secretvault keys", action=Subcommands)
    for name, help, fill in (
        ("create", "generate a new key inside the vault", _keys_create),
        ("list", "list keys", _keys_list),
        ("show", "show one key and its versions", _keys_show),
        ("rotate", "make a new primary version", _keys_rotate),
        ("set-min-version", "refuse versions below N for decrypt and verify",
         _keys_set_min_version),
        ("delete", "delete a key (or one version)", _keys_delete),
        ("public", "export a public key (ed25519, x25519)", _keys_public),
        ("import", "import existing key material, wrapped", _keys_import),
    ):
        deferred(ksub, name, help, fill, lazy=lazy)


def _keys_create(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import keys

    describe(p, keys.cmd_keys_create, "Generate a new key, version 1, inside the vault's "
             "secret memory. It is acknowledged only once it is sealed in the store.")
    key_name(p, "the new key's name: 1-128 characters from A-Z a-z 0-9 . _ - /, starting "
             "with a letter or digit")
    p.add_argument("--type", required=True, choices=KEY_TYPES, metavar="TYPE",
                   help=f"one of: {TYPES_HELP}")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="attach a label (repeatable)")
    connection_options(p)


def _keys_list(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import keys

    describe(p, keys.cmd_keys_list, "List the keys (names, types, versions; never key "
             "material).")
    p.add_argument("--prefix", default="", metavar="PREFIX",
                   help="only keys whose names start with PREFIX")
    connection_options(p)


def _keys_show(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import keys

    describe(p, keys.cmd_keys_show, "Show a key: its type, versions, public keys, labels.")
    key_name(p)
    connection_options(p)


def _keys_rotate(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import keys

    describe(p, keys.cmd_keys_rotate, "Create a new primary version of a key. New "
             "signatures, ciphertexts and MACs use it; older versions stay for decrypt and "
             "verify.")
    key_name(p)
    connection_options(p)


def _keys_set_min_version(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import keys

    describe(p, keys.cmd_keys_set_min_version, "Set the key's minimum decryption version: "
             "decrypt and verify refuse older versions.")
    key_name(p)
    p.add_argument("version", metavar="N", type=positive_int, help="the minimum version")
    connection_options(p)


def _keys_delete(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import keys

    describe(p, keys.cmd_keys_delete, "Delete a key: zero every version's secret memory and "
             "remove every sealed copy. This cannot be undone.")
    key_name(p)
    p.add_argument("--version", type=positive_int, metavar="N",
                   help="delete only version N (not the primary: rotate first)")
    connection_options(p)


def _keys_public(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import keys

    describe(p, keys.cmd_keys_public, "Export the public half of an Ed25519 or X25519 key.",
             epilog="example, verifying a signature with openssl:\n"
             "  secretvault keys public release --format pem --out release.pem\n"
             "  secretvault sign release --raw --in msg --out msg.sig\n"
             "  openssl pkeyutl -verify -pubin -inkey release.pem -rawin -in msg "
             "-sigfile msg.sig\n")
    key_name(p)
    p.add_argument("--format", choices=FORMATS, default="pem", metavar="FORMAT",
                   help="raw (32 bytes), pem (SubjectPublicKeyInfo, the default), openssh "
                   "(authorized_keys line, ed25519 only) or jwk (RFC 8037)")
    p.add_argument("--version", type=positive_int, default=0, metavar="N",
                   help="key version (default: the primary)")
    p.add_argument("--out", metavar="FILE", help="write it to FILE (default: stdout)")
    connection_options(p)


def _keys_import(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import keys

    describe(p, keys.cmd_keys_import, "Import key material you already have as a new key. "
             "The material is sealed here to the vault's import public key (crypto_box_seal) "
             "and opened by the vault straight into secret memory: it never crosses the wire "
             "in the clear.",
             epilog="accepted key files:\n"
             "  ed25519             the 32-byte seed, or an unencrypted PKCS#8 key (PEM or DER),\n"
             "                      e.g. from 'openssl genpkey -algorithm ed25519'\n"
             "  x25519              the 32-byte secret, or an unencrypted PKCS#8 key\n"
             "  xchacha20-poly1305  the 32-byte key\n"
             "  hmac-sha256         a 16-128 byte key\n")
    key_name(p, "the new key's name")
    p.add_argument("--type", required=True, choices=KEY_TYPES, metavar="TYPE",
                   help=f"one of: {TYPES_HELP}")
    p.add_argument("--from", dest="from_file", required=True, metavar="FILE",
                   help="the key file (see below)")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="attach a label (repeatable)")
    connection_options(p)


# --- crypto -------------------------------------------------------------------------------


def _add_crypto(sub: Any, lazy: bool) -> None:
    for name, help, fill in (
        ("sign", "sign a message with an ed25519 key", _sign),
        ("verify", "verify a signature", _verify),
        ("encrypt", "encrypt data to a key", _encrypt),
        ("decrypt", "decrypt a ciphertext", _decrypt),
        ("mac", "compute an HMAC-SHA-256", _mac),
        ("verify-mac", "verify an HMAC-SHA-256", _verify_mac),
    ):
        deferred(sub, name, help, fill, lazy=lazy)


def _sign(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import crypto

    describe(p, crypto.cmd_sign, "Sign a message (Ed25519). The output is a secretvault "
             "token: a 7-byte header naming the key version, then the 64-byte signature. "
             "--raw writes the bare signature, which openssl and any RFC 8032 library verify.")
    key_name(p)
    in_out(p, "message", "signature")
    p.add_argument("--raw", action="store_true",
                   help="write the bare 64-byte signature (no version header)")
    connection_options(p)


def _verify(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import crypto

    describe(p, crypto.cmd_verify, "Verify a signature made by sign (a token, or a bare "
             "64-byte signature). Exit status 0 when it matches, 1 when it does not.")
    key_name(p)
    in_out(p, "message", None)
    p.add_argument("--signature", required=True, metavar="FILE",
                   help="the signature: a token or a bare 64-byte signature ('-': stdin)")
    p.add_argument("--key-version", type=positive_int, metavar="N",
                   help="for a bare signature, the key version that made it "
                   "(default: the primary)")
    connection_options(p)


def _encrypt(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import crypto

    describe(p, crypto.cmd_encrypt, "Encrypt with an xchacha20-poly1305 key (in the vault), "
             "or to an x25519 key (here, with its public key: a sealed box only the vault can "
             "open).")
    key_name(p)
    in_out(p, "plaintext", "ciphertext")
    aad = p.add_mutually_exclusive_group()
    aad.add_argument("--aad", metavar="TEXT",
                     help="associated data, authenticated but not encrypted")
    aad.add_argument("--aad-file", metavar="FILE", help="associated data from FILE")
    connection_options(p)


def _decrypt(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import crypto

    describe(p, crypto.cmd_decrypt, "Decrypt a token from encrypt (xchacha20-poly1305 or an "
             "x25519 sealed box).")
    key_name(p)
    in_out(p, "ciphertext", "plaintext")
    aad = p.add_mutually_exclusive_group()
    aad.add_argument("--aad", metavar="TEXT", help="the associated data given to encrypt")
    aad.add_argument("--aad-file", metavar="FILE", help="associated data from FILE")
    connection_options(p)


def _mac(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import crypto

    describe(p, crypto.cmd_mac, "Compute an HMAC-SHA-256 of a message. The output is a "
             "token (7-byte header naming the key version, then the 32-byte MAC); --raw "
             "writes the bare MAC.")
    key_name(p)
    in_out(p, "message", "MAC")
    p.add_argument("--raw", action="store_true", help="write the bare 32-byte MAC")
    connection_options(p)


def _verify_mac(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import crypto

    describe(p, crypto.cmd_verify_mac, "Verify a MAC in constant time. Exit status 0 when it "
             "matches, 1 when it does not.")
    key_name(p)
    in_out(p, "message", None)
    p.add_argument("--mac", required=True, metavar="FILE",
                   help="the MAC: a token or a bare 32-byte MAC ('-': stdin)")
    p.add_argument("--key-version", type=positive_int, metavar="N",
                   help="for a bare MAC, the key version that made it (default: the primary)")
    connection_options(p)


# --- stats --------------------------------------------------------------------------------


def _stats(p: argparse.ArgumentParser) -> None:
    from secretvault.vault.cli import stats

    describe(p, stats.cmd_stats, "Show what secret memory costs right now: keys and pages, "
             "RLIMIT_MEMLOCK and the headroom in keys of each type, the memory cgroup, and "
             "the kernel's direct-map splits.",
             json_help="machine-readable output (JSON; with --watch, one object per line)")
    p.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    p.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes with --watch (default: 1)")
    connection_options(p)


# --- ssh-agent ----------------------------------------------------------------------------


def _ssh_agent(p: argparse.ArgumentParser) -> None:
    from secretvault.api.paths import default_agent_socket_path
    from secretvault.vault.cli import agent

    describe(p, agent.cmd_ssh_agent, "Print the line that points ssh, ssh-add, git and every "
             "SSH_AUTH_SOCK user at the vault's SSH agent (serve --ssh-agent), after checking "
             "that it answers: eval \"$(secretvault ssh-agent)\".", json_help=None)
    p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help="the vault's Unix socket: its agent socket is ssh-agent.sock beside "
                   f"it (default: ${SOCKET_ENV}, else {default_socket_path()})")
    p.add_argument("--agent-socket", metavar="PATH",
                   help=f"the agent socket itself (default: {default_agent_socket_path()})")
    p.add_argument("-c", dest="csh", action="store_true",
                   help="C shell syntax (setenv), as ssh-agent -c")


# --- model --------------------------------------------------------------------------------


def _add_model(model: argparse.ArgumentParser) -> None:
    """model compare: the options are the model report's own."""
    from secretvault.backends.model import report

    model.description = (
        "Questions for the models of secret memory: how the page-by-page (merged), "
        "pooled-PMD (v16) and PMD-buddy (the review's third) designs compare.")
    msub = subcommands(model, "model_command", "secretvault model")
    compare = msub.add_parser(
        "compare",
        help="run the same workloads on the three designs and report direct-map splits, "
        "memory, failures and free 2 MiB blocks",
        description="Replay workloads on the page-by-page, pooled-PMD (v16) and PMD-buddy "
        "models and report direct-map splits, memory held, failures (v16: OOM kills) and "
        "free 2 MiB blocks side by side.",
        formatter_class=Formatter,
    )
    report.configure_parser(compare)
    compare.set_defaults(func=report.run)
    from secretvault.backends.model import churn

    sequence = msub.add_parser(
        "churn",
        help="grow 1 page to 2 GiB, free, small regions, 2 GiB again: the kernel (measured) "
        "and the page model (simulated from this machine's state) side by side",
        description="Run the churn sequence on real secret memory (root, memfd_secret, x86-64) "
        "and simulate it on the page-by-page model started from this machine's state; print "
        "the splits and 2 MiB regions of every step on both sides with their ratio. Exit 0 "
        "when the model agrees within the tolerances of docs/models.md, 1 when not.",
        formatter_class=Formatter,
    )
    churn.configure_parser(sequence)
    sequence.set_defaults(func=churn.run)
