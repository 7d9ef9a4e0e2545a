"""The command line: every subcommand and its options, built group by group.

Each ``_add_*`` function adds one command group and points each subcommand
at the function in its group's module that runs it.  ``serve``'s options
that set a :class:`~secretvault.vault.config.ServerConfig` field are named by
that field and take its default (and show it in their help): the config's
fields are the one statement of those defaults.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

from secretvault.api.paths import SOCKET_ENV, default_socket_path
from secretvault.api.pubkeys import FORMATS
from secretvault.clients.local import KEY_TYPES
from secretvault.vault.cli import crypto, keys, stats
from secretvault.vault.cli.errors import PROG
from secretvault.vault.cli.options import (
    Formatter,
    Parser,
    Subcommands,
    Version,
    connection_options,
    deferred,
    in_out,
    key_name,
    leaf,
    number,
    positive_float,
    positive_int,
    subcommands,
    whole_number,
)
from secretvault.vault.sizes import format_exact_bytes

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

exit status: 0 success; 1 verify/verify-mac found a mismatch; 2 error (one line on stderr)
"""


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole command line.  ``lazy`` (what :func:`~secretvault.vault.cli.main`
    asks for): ``serve`` and ``model`` are built only if they are the command."""
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
    deferred(sub, "serve", "run the vault server", _add_serve, lazy=lazy)
    _add_keys(sub)
    _add_crypto(sub)
    _add_stats(sub)
    deferred(sub, "model", "the page-by-page and pooled-PMD models of secret memory",
              _add_model, lazy=lazy)
    return parser


# --- serve --------------------------------------------------------------------------------


def _default(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``."""
    field = next(f for f in fields(config) if f.name == name)
    assert field.default is not MISSING, f"{config.__name__}.{name} has no plain default"
    return field.default


def _server_option(group: Any, flag: str, name: str, help: str, *,
                   shown: Callable[[Any], str] | None = None, **kwargs: Any) -> None:
    """An option that sets ``ServerConfig.<name>``: its dest is the field's name, its
    default the field's (``shown`` writes it into the help)."""
    from secretvault.vault.config import ServerConfig

    default = _default(ServerConfig, name)
    if shown is not None:
        help = f"{help} (default: {shown(default)})"
    group.add_argument(flag, dest=name, default=default, help=help, **kwargs)


def _add_serve(parser: argparse.ArgumentParser) -> None:
    """``serve``'s options: their defaults are the server's own (it loads here)."""
    from secretvault.vault.app import BACKENDS, PASSPHRASE_ENV, VaultConfig, default_data_dir
    from secretvault.vault.cli import serve
    from secretvault.vault.sealing import Argon2Params

    parser.description = (
        "Run the vault: unseal the key store into secret memory and serve the "
        "gRPC API on a Unix socket (and, optionally, on TCP with TLS). It prints one summary "
        "at start-up (backend and protection, memlock limit and headroom in keys, where the "
        "store and socket are) and drains in-flight calls on SIGTERM or Ctrl-C.")
    parser.epilog = f"""\
where the unseal material comes from (first match wins):
  --unseal-key-file FILE    a 32-byte key file
  --passphrase-file FILE    a passphrase in a file
  ${PASSPHRASE_ENV}   a passphrase in the environment
With none given on the first start, the vault creates an unseal key file
(mode 0600) in the data directory and says where: fine for trying it out;
in production keep the unseal material on another machine or medium.
"""
    parser.set_defaults(func=serve.cmd_serve)
    parser.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"Unix socket to listen on (default: ${SOCKET_ENV}, else "
                        f"{default_socket_path()})")
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"where the sealed key store lives (default: {default_data_dir()})")
    backend = _default(VaultConfig, "backend")
    parser.add_argument("--backend", choices=BACKENDS, default=backend,
                        help=f"where keys live: {backend} (real secret memory, the default), "
                        "or a model for development: page-model, pooled-pmd-model "
                        "(keys NOT in secret memory)")
    _server_option(parser, "--policy", "policy_file", metavar="FILE",
                   help="access-control policy (identities -> operations on key-name "
                   "patterns; default deny)")
    unseal = parser.add_argument_group("unseal material")
    unseal_x = unseal.add_mutually_exclusive_group()
    unseal_x.add_argument("--passphrase-file", metavar="FILE",
                          help=f"read the store's passphrase from FILE (instead of "
                          f"${PASSPHRASE_ENV})")
    unseal_x.add_argument("--unseal-key-file", metavar="FILE",
                          help="a 32-byte unseal key file (read straight into secret memory)")
    tcp = parser.add_argument_group("TCP with TLS")
    _server_option(tcp, "--tcp", "tcp", metavar="HOST:PORT",
                   help="also listen on HOST:PORT with TLS (needs --tls-cert and --tls-key)")
    _server_option(tcp, "--tls-cert", "tls_cert", metavar="FILE",
                   help="PEM server certificate chain")
    _server_option(tcp, "--tls-key", "tls_key", metavar="FILE", help="PEM server private key")
    _server_option(tcp, "--client-ca", "client_ca", metavar="FILE",
                   help="require client certificates signed by this CA (mutual TLS)")
    _server_option(tcp, "--no-unix-socket", "unix_socket", action="store_false",
                   help="serve TCP only, not the default Unix socket")
    ops = parser.add_argument_group("operations")
    _server_option(ops, "--audit-log", "audit_log", metavar="FILE",
                   help="append one JSON line per operation to FILE (default: stderr)")
    _server_option(ops, "--audit-fail-open", "audit_fail_open", action="store_true",
                   help="keep serving when the audit log cannot be written "
                   "(default: refuse calls)")
    _server_option(ops, "--metrics", "metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics "
                   "(e.g. 127.0.0.1:9464)")
    _server_option(ops, "--keep-capabilities", "keep_capabilities", action="store_true",
                   help="keep the capabilities the server was started with (default: "
                   "drop them all at start, CAP_IPC_LOCK first, so RLIMIT_MEMLOCK holds)")
    _server_option(ops, "--stop-on-tracer", "stop_on_tracer", action="store_true",
                   help="when a debugger or other tracer attaches, zero secret memory and "
                   "exit 3 (default: report it in stats and keep serving)")
    _server_option(ops, "--tracer-check-seconds", "tracer_check_seconds", type=number,
                   metavar="SECONDS", shown=str,
                   help="how often --stop-on-tracer looks for a tracer")
    # the server's limits: their ranges are checked by ServerConfig.validate
    _server_option(ops, "--grace", "grace_seconds", type=number, metavar="SECONDS",
                   help="how long in-flight calls may finish on SIGTERM", shown="{:g}".format)
    _server_option(ops, "--max-message-bytes", "max_message_bytes", type=whole_number,
                   metavar="N", help="largest request accepted, in bytes",
                   shown=format_exact_bytes)
    _server_option(ops, "--max-concurrent-rpcs", "max_concurrent_rpcs", type=whole_number,
                   metavar="N", help="calls in progress per listener before RESOURCE_EXHAUSTED",
                   shown=str)
    _server_option(ops, "--max-streams-per-identity", "max_streams_per_identity",
                   type=whole_number, metavar="N",
                   help="open Stream and WatchStats calls per identity", shown=str)
    _server_option(ops, "--stream-idle-seconds", "stream_idle_seconds", type=number,
                   metavar="SECONDS",
                   help="cancel a Stream that sends no request for this long",
                   shown="{:g}".format)
    _server_option(ops, "--max-versions-per-key", "max_versions_per_key", type=whole_number,
                   metavar="N", help="versions a key may have before a rotation is refused",
                   shown=str)
    _server_option(ops, "--max-connections", "max_connections", type=whole_number,
                   metavar="N", help="connections each listener holds at once (lowered at "
                   "start to fit RLIMIT_NOFILE)", shown=str)
    _server_option(ops, "--connection-idle-seconds", "connection_idle_seconds", type=number,
                   metavar="SECONDS", help="close a connection with no call for this long",
                   shown="{:g}".format)
    _server_option(ops, "--reserved-descriptors", "reserved_descriptors", type=whole_number,
                   metavar="N", help="descriptors kept out of the listeners' share",
                   shown=str)
    kdf = Argon2Params()
    new_store = parser.add_argument_group("a new store's passphrase KDF (Argon2id)")
    new_store.add_argument("--argon2-ops", type=positive_int, metavar="N",
                           help=f"opslimit (default: {kdf.ops})")
    new_store.add_argument("--argon2-mem", type=positive_int, metavar="BYTES",
                           help=f"memlimit in bytes (default: {format_exact_bytes(kdf.mem)})")
    model = parser.add_argument_group("model backends (page-model, pooled-pmd-model)")
    memory = format_exact_bytes(_default(VaultConfig, "model_memory_bytes"))
    model.add_argument("--model-memory", type=positive_int, metavar="BYTES",
                       help=f"simulated RAM (default: {memory})")
    cma = format_exact_bytes(_default(VaultConfig, "model_cma_bytes"))
    model.add_argument("--model-cma", type=positive_int, metavar="BYTES",
                       help=f"the pooled-PMD model's CMA pool (default: {cma})")
    model.add_argument("--model-fallback", action="store_true",
                       help="pooled-PMD: fall back to order-0 pages when the pool is empty")


# --- keys ---------------------------------------------------------------------------------


def _add_keys(sub: Any) -> None:
    group = sub.add_parser("keys", help="create, list, show, rotate, delete, import keys; "
                           "export public keys",
                           description="Manage keys. Key material never leaves the vault: "
                           "keys are generated inside it or imported sealed, and only public "
                           "keys can be read back.", formatter_class=Formatter)
    ksub = subcommands(group, "keys_command", "secretvault keys")

    p = leaf(ksub, "create", keys.cmd_keys_create, "generate a new key inside the vault",
             "Generate a new key, version 1, inside the vault's secret memory. It is "
             "acknowledged only once it is sealed in the store.")
    key_name(p, "the new key's name: 1-128 characters from A-Z a-z 0-9 . _ - /, starting "
             "with a letter or digit")
    p.add_argument("--type", required=True, choices=KEY_TYPES, metavar="TYPE",
                   help=f"one of: {TYPES_HELP}")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="attach a label (repeatable)")
    connection_options(p)

    p = leaf(ksub, "list", keys.cmd_keys_list, "list keys", "List the keys (names, types, "
             "versions; never key material).")
    p.add_argument("--prefix", default="", metavar="PREFIX",
                   help="only keys whose names start with PREFIX")
    connection_options(p)

    p = leaf(ksub, "show", keys.cmd_keys_show, "show one key and its versions",
             "Show a key: its type, versions, public keys, labels.")
    key_name(p)
    connection_options(p)

    p = leaf(ksub, "rotate", keys.cmd_keys_rotate, "make a new primary version",
             "Create a new primary version of a key. New signatures, ciphertexts and MACs "
             "use it; older versions stay for decrypt and verify.")
    key_name(p)
    connection_options(p)

    p = leaf(ksub, "set-min-version", keys.cmd_keys_set_min_version,
             "refuse versions below N for decrypt and verify",
             "Set the key's minimum decryption version: decrypt and verify refuse older "
             "versions.")
    key_name(p)
    p.add_argument("version", metavar="N", type=positive_int, help="the minimum version")
    connection_options(p)

    p = leaf(ksub, "delete", keys.cmd_keys_delete, "delete a key (or one version)",
             "Delete a key: zero every version's secret memory and remove every sealed "
             "copy. This cannot be undone.")
    key_name(p)
    p.add_argument("--version", type=positive_int, metavar="N",
                   help="delete only version N (not the primary: rotate first)")
    connection_options(p)

    p = leaf(ksub, "public", keys.cmd_keys_public, "export a public key (ed25519, x25519)",
             "Export the public half of an Ed25519 or X25519 key.",
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

    p = leaf(ksub, "import", keys.cmd_keys_import, "import existing key material, wrapped",
             "Import key material you already have as a new key. The material is sealed "
             "here to the vault's import public key (crypto_box_seal) and opened by the vault "
             "straight into secret memory: it never crosses the wire in the clear.",
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


def _add_crypto(sub: Any) -> None:
    p = leaf(sub, "sign", crypto.cmd_sign, "sign a message with an ed25519 key",
             "Sign a message (Ed25519). The output is a secretvault token: a 7-byte header "
             "naming the key version, then the 64-byte signature. --raw writes the bare "
             "signature, which openssl and any RFC 8032 library verify.")
    key_name(p)
    in_out(p, "message", "signature")
    p.add_argument("--raw", action="store_true",
                   help="write the bare 64-byte signature (no version header)")
    connection_options(p)

    p = leaf(sub, "verify", crypto.cmd_verify, "verify a signature",
             "Verify a signature made by sign (a token, or a bare 64-byte signature). Exit "
             "status 0 when it matches, 1 when it does not.")
    key_name(p)
    in_out(p, "message", None)
    p.add_argument("--signature", required=True, metavar="FILE",
                   help="the signature: a token or a bare 64-byte signature ('-': stdin)")
    p.add_argument("--key-version", type=positive_int, metavar="N",
                   help="for a bare signature, the key version that made it "
                   "(default: the primary)")
    connection_options(p)

    p = leaf(sub, "encrypt", crypto.cmd_encrypt, "encrypt data to a key",
             "Encrypt with an xchacha20-poly1305 key (in the vault), or to an x25519 key "
             "(here, with its public key: a sealed box only the vault can open).")
    key_name(p)
    in_out(p, "plaintext", "ciphertext")
    aad = p.add_mutually_exclusive_group()
    aad.add_argument("--aad", metavar="TEXT",
                     help="associated data, authenticated but not encrypted")
    aad.add_argument("--aad-file", metavar="FILE", help="associated data from FILE")
    connection_options(p)

    p = leaf(sub, "decrypt", crypto.cmd_decrypt, "decrypt a ciphertext",
             "Decrypt a token from encrypt (xchacha20-poly1305 or an x25519 sealed box).")
    key_name(p)
    in_out(p, "ciphertext", "plaintext")
    aad = p.add_mutually_exclusive_group()
    aad.add_argument("--aad", metavar="TEXT", help="the associated data given to encrypt")
    aad.add_argument("--aad-file", metavar="FILE", help="associated data from FILE")
    connection_options(p)

    p = leaf(sub, "mac", crypto.cmd_mac, "compute an HMAC-SHA-256",
             "Compute an HMAC-SHA-256 of a message. The output is a token (7-byte header "
             "naming the key version, then the 32-byte MAC); --raw writes the bare MAC.")
    key_name(p)
    in_out(p, "message", "MAC")
    p.add_argument("--raw", action="store_true", help="write the bare 32-byte MAC")
    connection_options(p)

    p = leaf(sub, "verify-mac", crypto.cmd_verify_mac, "verify an HMAC-SHA-256",
             "Verify a MAC in constant time. Exit status 0 when it matches, 1 when it "
             "does not.")
    key_name(p)
    in_out(p, "message", None)
    p.add_argument("--mac", required=True, metavar="FILE",
                   help="the MAC: a token or a bare 32-byte MAC ('-': stdin)")
    p.add_argument("--key-version", type=positive_int, metavar="N",
                   help="for a bare MAC, the key version that made it (default: the primary)")
    connection_options(p)


# --- stats --------------------------------------------------------------------------------


def _add_stats(sub: Any) -> None:
    p = leaf(sub, "stats", stats.cmd_stats, "secret memory accounting, memlock headroom, "
             "direct-map splits",
             "Show what secret memory costs right now: keys and pages, RLIMIT_MEMLOCK and "
             "the headroom in keys of each type, the memory cgroup, and the kernel's "
             "direct-map splits.",
             json_help="machine-readable output (JSON; with --watch, one object per line)")
    p.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    p.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes with --watch (default: 1)")
    connection_options(p)


# --- model --------------------------------------------------------------------------------


def _add_model(model: argparse.ArgumentParser) -> None:
    """model compare: the options are the model report's own."""
    from secretvault.backends.model import report

    model.description = (
        "Questions for the two model backends: how the pooled-PMD (v16) and "
        "page-by-page (merged) designs of secret memory compare.")
    msub = subcommands(model, "model_command", "secretvault model")
    compare = msub.add_parser(
        "compare",
        help="run the same workloads on both models and report direct-map splits, "
        "memory and failures",
        description="Replay workloads on the pooled-PMD and page-by-page models and report "
        "direct-map splits, memory held and failures side by side.",
        formatter_class=Formatter,
    )
    report.configure_parser(compare)
    compare.set_defaults(func=report.run)
