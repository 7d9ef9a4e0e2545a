"""sign, verify, mac, verify-mac, encrypt, decrypt: the vault's keys used in place.

Signatures, MACs and ciphertexts are secretvault tokens (a 7-byte header
naming the key version, then the payload: :mod:`secretvault.api.framing`);
``--raw`` writes a bare signature or MAC, and verify accepts either.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from secretvault.api import framing
from secretvault.api.errors import MalformedCiphertext, WrongKeyType
from secretvault.api.framing import Kind
from secretvault.vault.cli.connect import connect
from secretvault.vault.cli.errors import EXIT_MISMATCH, EXIT_OK, CliError
from secretvault.vault.cli.files import b64, print_json, read_input, write_output

if TYPE_CHECKING:
    from secretvault.clients import VaultClient


def _aad(args: argparse.Namespace) -> bytes:
    if getattr(args, "aad_file", None):
        return read_input(args.aad_file, "associated data")
    aad: str | None = getattr(args, "aad", None)
    return aad.encode() if aad is not None else b""


def _version_of(kind: Kind, token: bytes) -> int | None:
    try:
        return framing.unframe(kind, token)[0]
    except MalformedCiphertext:
        return None


def cmd_sign(args: argparse.Namespace) -> int:
    return _make_tag(args, Kind.SIGNATURE, "signature", "signature")


def _token_arg(data: bytes, kind: Kind, raw_size: int, version: int | None,
               vault: VaultClient, name: str) -> bytes:
    """A token from a file holding either a token or the raw payload."""
    if len(data) == raw_size and not data.startswith(framing.MAGIC + kind.value):
        # a raw (--raw / openssl) signature or MAC carries no key version:
        # --key-version, else the key's primary version
        v = version or vault.get_key(name).primary_version
        return framing.frame(kind, v, data)
    return data


def _verdict(args: argparse.Namespace, valid: bool, what: str, version: int | None) -> int:
    if args.json:
        print_json({"key": args.name, "version": version, "valid": valid})
    elif valid:
        print(f"valid: the {what} matches key {args.name!r} version {version}")
    else:
        print(f"INVALID: the {what} does not match key {args.name!r}"
              + (f" version {version}" if version else ""), file=sys.stderr)
    return EXIT_OK if valid else EXIT_MISMATCH


def _verify_tag(args: argparse.Namespace, path: str | None, kind: Kind, raw_len: int,
                what: str, option: str) -> int:
    """verify and verify-mac: the tag from ``path``, the message from --in."""
    tag = read_input(path, what)
    if path in (None, "-") and args.infile in (None, "-"):
        raise CliError(f"the message and the {what} cannot both come from stdin",
                       f"give the message with --in FILE or the {what} with {option} FILE")
    message = read_input(args.infile, "message")
    with connect(args) as vault:
        token = _token_arg(tag, kind, raw_len, args.key_version, vault, args.name)
        check = vault.verify if kind is Kind.SIGNATURE else vault.verify_mac
        valid = check(args.name, message, token)
    return _verdict(args, valid, what, _version_of(kind, token))


def cmd_verify(args: argparse.Namespace) -> int:
    return _verify_tag(args, args.signature, Kind.SIGNATURE, 64, "signature", "--signature")


def cmd_mac(args: argparse.Namespace) -> int:
    return _make_tag(args, Kind.MAC, "mac", "MAC")


def _make_tag(args: argparse.Namespace, kind: Kind, field: str, what: str) -> int:
    """sign and mac: the token (or with --raw the bare tag) of the message."""
    message = read_input(args.infile, "message")
    with connect(args) as vault:
        make = vault.sign if kind is Kind.SIGNATURE else vault.mac
        token = make(args.name, message)
    version, raw = framing.unframe(kind, token)
    if args.json:
        print_json({"key": args.name, "version": version, field: b64(token),
                    f"raw_{field}": b64(raw)}, args.out)
    else:
        write_output(raw if args.raw else token, args.out, binary=True, what=what)
    return EXIT_OK


def cmd_verify_mac(args: argparse.Namespace) -> int:
    return _verify_tag(args, args.mac, Kind.MAC, 32, "MAC", "--mac")


def cmd_encrypt(args: argparse.Namespace) -> int:
    plaintext = read_input(args.infile, "plaintext")
    aad = _aad(args)
    with connect(args) as vault:
        try:
            token = vault.encrypt(args.name, plaintext, aad)
        except WrongKeyType:
            # an X25519 key: encrypt locally to its public key (a sealed box
            # only the vault can open); sealed boxes take no associated data
            pub = vault.public_key(args.name)
            if pub.type != "x25519":
                raise
            if aad:
                raise CliError("sealed boxes (x25519 keys) take no associated data",
                               "drop --aad/--aad-file") from None
            token = pub.encrypt(plaintext)
    if args.json:
        kind = Kind(token[2:3])
        print_json({"key": args.name, "version": framing.unframe(kind, token)[0],
                    "ciphertext": b64(token)}, args.out)
    else:
        write_output(token, args.out, binary=True, what="ciphertext")
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    token = read_input(args.infile, "ciphertext")
    aad = _aad(args)
    with connect(args) as vault:
        plaintext = vault.decrypt(args.name, token, aad)
    if args.json:
        version = _version_of(Kind.AEAD, token) or _version_of(Kind.SEALED_BOX, token)
        print_json({"key": args.name, "version": version, "plaintext": b64(plaintext)},
                   args.out)
    else:
        write_output(plaintext, args.out, binary=False, what="plaintext")
    return EXIT_OK
