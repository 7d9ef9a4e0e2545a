"""The ``secretvault`` command.

``serve`` runs the server (``secretvault.vault.server``); every other subcommand is a
client of it, built on :mod:`clients`.  A user mistake — a bad argument, a
missing file, an unknown key, an unreachable vault — ends with one line on
stderr naming the problem and the fix, and a non-zero exit status, never a
traceback.

Exit status: 0 success; 1 the check ran and failed (``verify``,
``verify-mac``: the signature or MAC does not match); 2 the command could not
do its job (usage error, error from the vault, unreadable file).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from secretvault.api import framing
from secretvault.api.errors import (
    ConnectionFailed,
    DeadlineExceeded,
    DecryptionFailed,
    FailedPrecondition,
    ImportKeyUnavailable,
    IntegrityError,
    InvalidArgument,
    InvalidImport,
    InvalidKeyName,
    KeyExists,
    KeyNotFound,
    MalformedCiphertext,
    MemlockExceeded,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    PoolExhausted,
    RequestTooLarge,
    ResourceExhausted,
    SecretMemoryExhausted,
    SecretMemoryUnavailable,
    ShuttingDown,
    StoreBusy,
    StoreFull,
    StoreSealed,
    TooManyCalls,
    Unavailable,
    VaultError,
    VersionNotFound,
    WrongKeyType,
    WrongPassphrase,
)
from secretvault.api.framing import Kind
from secretvault.api.paths import SOCKET_ENV, default_socket_path
from secretvault.api.pubkeys import FORMATS
from secretvault.clients.local import KEY_TYPES

PROG = "secretvault"

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_ERROR = 2

if TYPE_CHECKING:  # the client (and grpc) load only when a subcommand needs them
    from secretvault.clients import Key, Stats, VaultClient


class CliError(Exception):
    """A user mistake the CLI itself detects: the problem and how to fix it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


# --- the fix for each error the vault can report -----------------------------------

#: the nearest class in an error's MRO decides the hint
FIXES: dict[type[VaultError], str] = {
    KeyNotFound: "'secretvault keys list' shows the keys; "
    "'secretvault keys create NAME --type TYPE' makes one",
    VersionNotFound: "'secretvault keys show NAME' lists the key's versions",
    KeyExists: "choose another name, or 'secretvault keys rotate NAME' for a new version",
    InvalidKeyName: "rename the key within that character set",
    WrongKeyType: "'secretvault keys show NAME' shows its type: sign/verify need ed25519, "
    "encrypt/decrypt xchacha20-poly1305 (decrypt also x25519), mac/verify-mac hmac-sha256",
    MalformedCiphertext: "pass the token exactly as secretvault wrote it (not --raw output, "
    "not base64)",
    DecryptionFailed: "check the key name and --aad: the data was made with another key "
    "or associated data, or it was altered",
    InvalidImport: "see 'secretvault keys import --help' for the accepted key files",
    PermissionDenied: "the vault's policy does not allow this: ask its operator to grant it",
    MemlockExceeded: "raise the server's memlock limit (ulimit -l, LimitMEMLOCK=, "
    "--ulimit memlock=) or grant it CAP_IPC_LOCK; 'secretvault stats' shows the headroom",
    PoolExhausted: "the pooled-PMD model's pool is drained: start it with a larger pool "
    "or with fallback enabled",
    SecretMemoryExhausted: "free keys ('secretvault keys delete') or give the machine or "
    "its memory cgroup more memory",
    RequestTooLarge: "send less in one call (smaller messages, fewer operations per batch)",
    StoreSealed: "wait for the vault to finish unsealing, then retry",
    WrongPassphrase: "give the passphrase the store was created with (SECRETVAULT_PASSPHRASE "
    "or --passphrase-file) or its --unseal-key-file",
    SecretMemoryUnavailable: "see README.md, Troubleshooting; for development only, "
    "--backend page-model runs on a model",
    IntegrityError: "the store is damaged or was tampered with: restore it from a backup",
    ImportKeyUnavailable: "the vault's sealed import key is damaged: restore the store from "
    "a backup, or create keys in the vault instead of importing them",
    StoreFull: "free space on the vault's data directory, then retry",
    StoreBusy: "another process holds the store: run one vault per data directory, then retry",
    TooManyCalls: "close idle streams or watches, or ask the operator to raise the limits "
    "(--max-concurrent-rpcs, --max-streams-per-identity)",
    ShuttingDown: "the vault is stopping: retry once it is back",
    OutcomeUnknown: "read the key back ('secretvault keys show NAME') to see whether the "
    "change was applied",
    DeadlineExceeded: "raise --timeout, or check the vault's load",
    # the families: the vault's message names what is wrong
    InvalidArgument: "correct what the message names ('--help' lists the options)",
    NotFound: "'secretvault keys list' shows what exists",
    FailedPrecondition: "change what the message names first, then retry",
    ResourceExhausted: "'secretvault stats' shows what is used and what is left",
    Unavailable: "retry in a moment; if it persists, check the vault is running",
}


def fix_for(error: VaultError) -> str:
    for cls in type(error).__mro__:
        fix = FIXES.get(cls)
        if fix is not None:
            return fix
    return "see the vault's log for details"


def _connection_fix(args: argparse.Namespace) -> str:
    """What to do when the vault cannot be reached, from what is on disk."""
    if getattr(args, "connect", None):
        return (
            f"check that the vault listens on {args.connect} with TLS "
            "('secretvault serve --tcp ...') and that --ca-cert matches its certificate"
        )
    path = _socket_path(args)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (
            f"no vault socket at {path}: start one with 'secretvault serve', or point to it "
            f"with --socket PATH or {SOCKET_ENV}"
        )
    except PermissionError:
        return f"you may not reach {path}: ask the vault's operator for access"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} is not a socket: pass the vault's socket with --socket PATH"
    if not os.access(path, os.R_OK | os.W_OK):
        return (
            f"you may not connect to {path} (mode {stat.S_IMODE(st.st_mode):o}): "
            "ask the vault's operator for access"
        )
    return f"nothing answers on {path}: the vault may have stopped; restart 'secretvault serve'"


def _target(args: argparse.Namespace) -> str:
    connect: str | None = getattr(args, "connect", None)
    return connect if connect else f"unix:{_socket_path(args)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(problem: str, fix: str) -> int:
    line = f"{PROG}: error: {_one_line(problem)}"
    if fix:
        line += f" (fix: {_one_line(fix)})"
    print(line, file=sys.stderr)
    return EXIT_ERROR


# --- input and output ------------------------------------------------------------


def _read(path: str | None, what: str) -> bytes:
    """A file's bytes, or stdin's for None or '-'."""
    if path is None or path == "-":
        if sys.stdin.isatty():
            print(f"{PROG}: reading the {what} from the terminal; end it with Ctrl-D",
                  file=sys.stderr)
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(
            f"cannot read the {what} from {path}: {e.strerror or e}",
            "check the path and its permissions",
        ) from None


def _write(data: bytes, path: str | None, *, binary: bool, what: str) -> None:
    """Write to a file (created 0644, replaced) or to stdout for None or '-'."""
    if path is None or path == "-":
        if binary and sys.stdout.isatty():
            raise CliError(
                f"refusing to write the binary {what} to the terminal",
                "add --out FILE, or --json, or pipe it (e.g. '| base64')",
            )
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise CliError(
            f"cannot write the {what} to {path}: {e.strerror or e}",
            "check the directory exists and is writable",
        ) from None


def _print_json(value: Any, path: str | None = None) -> None:
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    _write(text.encode(), path, binary=False, what="JSON")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _aad(args: argparse.Namespace) -> bytes:
    if getattr(args, "aad_file", None):
        return _read(args.aad_file, "associated data")
    aad: str | None = getattr(args, "aad", None)
    return aad.encode() if aad is not None else b""


def _labels(pairs: Sequence[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"a label must be KEY=VALUE, got {pair!r}", "write --label team=ci")
        labels[key] = value
    return labels


# --- connecting -----------------------------------------------------------------------


def _socket_path(args: argparse.Namespace) -> str:
    path: str | None = getattr(args, "socket", None)
    return os.path.abspath(path or default_socket_path())


def _client(args: argparse.Namespace) -> VaultClient:
    from secretvault.clients import TlsConfig, VaultClient

    if args.connect:
        if not args.ca_cert:
            raise CliError(
                f"--connect {args.connect} needs the CA that signed the vault's certificate",
                "add --ca-cert FILE (and --client-cert/--client-key for mutual TLS)",
            )
        if bool(args.client_cert) != bool(args.client_key):
            raise CliError(
                "mutual TLS needs both --client-cert and --client-key", "give both, or neither"
            )
        try:
            tls = TlsConfig.from_files(
                args.ca_cert, args.client_cert, args.client_key, args.server_name
            )
        except OSError as e:
            raise CliError(
                f"cannot read a TLS file: {e.filename}: {e.strerror}", "check the path"
            ) from None
        return VaultClient(args.connect, tls=tls, timeout=args.timeout)
    return VaultClient(_socket_path(args), timeout=args.timeout)


@contextmanager
def _vault(args: argparse.Namespace) -> Iterator[VaultClient]:
    client = _client(args)
    try:
        yield client
    finally:
        client.close()


# --- keys --------------------------------------------------------------------------------


def _time(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _key_json(key: Key) -> dict[str, Any]:
    return {
        "name": key.name,
        "type": key.type,
        "created": key.created.isoformat(),
        "primary_version": key.primary_version,
        "min_decryption_version": key.min_decryption_version,
        "labels": dict(key.labels),
        "versions": [
            {
                "version": v.version,
                "created": v.created.isoformat(),
                "public_key": _b64(v.public_key) if v.public_key else None,
                **({"damaged": v.damaged} if v.damaged else {}),
            }
            for v in key.versions
        ],
    }


def _console() -> Any:
    from rich.console import Console

    # piped output is not cut to rich's default 80 columns
    return Console(highlight=False, soft_wrap=False,
                   width=None if sys.stdout.isatty() else 160)


def _show_key(key: Key) -> None:
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{key.name}[/bold]  ({key.type})")
    console.print(f"  created                 {_time(key.created)}")
    console.print(f"  primary version         {key.primary_version}")
    console.print(f"  min decryption version  {key.min_decryption_version}")
    if key.labels:
        console.print("  labels                  "
                      + ", ".join(f"{k}={v}" for k, v in sorted(key.labels.items())))
    table = Table("version", "created", "state", box=None, pad_edge=False)
    table.add_column("public key (base64)", overflow="fold")
    for v in key.versions:
        state = "primary" if v.version == key.primary_version else ""
        if v.version < key.min_decryption_version:
            state = "below min version"
        if v.damaged:
            state = f"[red]damaged: {v.damaged}[/red]"
        table.add_row(str(v.version), _time(v.created), state,
                      _b64(v.public_key) if v.public_key else "-")
    console.print(table)


def cmd_keys_create(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        key = vault.create_key(args.name, args.type, _labels(args.label))
    if args.json:
        _print_json(_key_json(key))
    else:
        print(f"created {key.type} key {key.name!r}, version {key.primary_version}")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _vault(args) as vault:
        keys = vault.list_keys(args.prefix)
    if args.json:
        _print_json([_key_json(k) for k in keys])
        return EXIT_OK
    if not keys:
        where = f" starting with {args.prefix!r}" if args.prefix else ""
        print(f"no keys{where}; create one with 'secretvault keys create NAME --type TYPE'")
        return EXIT_OK
    table = Table("name", "type", "primary", "versions", "created", "labels", box=None,
                  pad_edge=False)
    for k in keys:
        table.add_row(
            k.name, k.type, str(k.primary_version), str(len(k.versions)), _time(k.created),
            ", ".join(f"{a}={b}" for a, b in sorted(k.labels.items())),
        )
    _console().print(table)
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        key = vault.get_key(args.name)
    if args.json:
        _print_json(_key_json(key))
    else:
        _show_key(key)
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        key = vault.rotate_key(args.name)
    if args.json:
        _print_json(_key_json(key))
    else:
        print(f"rotated {key.name!r}: primary version is now {key.primary_version}")
    return EXIT_OK


def cmd_keys_set_min_version(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        key = vault.set_min_decryption_version(args.name, args.version)
    if args.json:
        _print_json(_key_json(key))
    else:
        print(f"{key.name!r} now refuses versions below {key.min_decryption_version} "
              "for decrypt and verify")
    return EXIT_OK


def cmd_keys_delete(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        if args.version:
            key = vault.delete_key_version(args.name, args.version)
            if args.json:
                _print_json(_key_json(key))
            else:
                print(f"deleted version {args.version} of {args.name!r} "
                      "(memory zeroed, sealed copy removed)")
            return EXIT_OK
        vault.delete_key(args.name)
    if args.json:
        _print_json({"deleted": args.name})
    else:
        print(f"deleted {args.name!r}: every version zeroed and its sealed copies removed")
    return EXIT_OK


def cmd_keys_public(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        pub = vault.public_key(args.name, version=args.version, format=args.format)
    if args.json:
        _print_json({
            "name": pub.name, "type": pub.type, "version": pub.version,
            "format": pub.format,
            "public_key": _b64(pub.data) if pub.format == "raw" else pub.data.decode(),
        }, args.out)
        return EXIT_OK
    data = pub.data if pub.format in ("raw", "pem", "openssh") else pub.data + b"\n"
    _write(data, args.out, binary=pub.format == "raw", what="raw public key")
    return EXIT_OK


def cmd_keys_import(args: argparse.Namespace) -> int:
    from secretvault.clients import local

    try:
        material = local.read_key_material(args.from_file, args.type)
    except OSError as e:
        raise CliError(
            f"cannot read the key file {args.from_file}: {e.strerror or e}", "check the path"
        ) from None
    try:
        with _vault(args) as vault:
            key = vault.import_key(args.name, args.type, material, _labels(args.label))
    finally:
        local.wipe(material)
    if args.json:
        _print_json(_key_json(key))
    else:
        print(f"imported {key.type} key {key.name!r} as version {key.primary_version} "
              "(sealed to the vault's import key before it left this process)")
    return EXIT_OK


# --- crypto ---------------------------------------------------------------------------------


def _version_of(kind: Kind, token: bytes) -> int | None:
    try:
        return framing.unframe(kind, token)[0]
    except MalformedCiphertext:
        return None


def cmd_sign(args: argparse.Namespace) -> int:
    message = _read(args.infile, "message")
    with _vault(args) as vault:
        token = vault.sign(args.name, message)
    version, raw = framing.unframe(Kind.SIGNATURE, token)
    if args.json:
        _print_json({"key": args.name, "version": version, "signature": _b64(token),
                     "raw_signature": _b64(raw)}, args.out)
    else:
        _write(raw if args.raw else token, args.out, binary=True, what="signature")
    return EXIT_OK


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
        _print_json({"key": args.name, "version": version, "valid": valid})
    elif valid:
        print(f"valid: the {what} matches key {args.name!r} version {version}")
    else:
        print(f"INVALID: the {what} does not match key {args.name!r}"
              + (f" version {version}" if version else ""), file=sys.stderr)
    return EXIT_OK if valid else EXIT_MISMATCH


def _verify_tag(args: argparse.Namespace, path: str | None, kind: Kind, raw_len: int,
                what: str, option: str) -> int:
    """verify and verify-mac: the tag from ``path``, the message from --in."""
    tag = _read(path, what)
    if path in (None, "-") and args.infile in (None, "-"):
        raise CliError(f"the message and the {what} cannot both come from stdin",
                       f"give the message with --in FILE or the {what} with {option} FILE")
    message = _read(args.infile, "message")
    with _vault(args) as vault:
        token = _token_arg(tag, kind, raw_len, args.key_version, vault, args.name)
        check = vault.verify if kind is Kind.SIGNATURE else vault.verify_mac
        valid = check(args.name, message, token)
    return _verdict(args, valid, what, _version_of(kind, token))


def cmd_verify(args: argparse.Namespace) -> int:
    return _verify_tag(args, args.signature, Kind.SIGNATURE, 64, "signature", "--signature")


def cmd_mac(args: argparse.Namespace) -> int:
    message = _read(args.infile, "message")
    with _vault(args) as vault:
        token = vault.mac(args.name, message)
    version, raw = framing.unframe(Kind.MAC, token)
    if args.json:
        _print_json({"key": args.name, "version": version, "mac": _b64(token),
                     "raw_mac": _b64(raw)}, args.out)
    else:
        _write(raw if args.raw else token, args.out, binary=True, what="MAC")
    return EXIT_OK


def cmd_verify_mac(args: argparse.Namespace) -> int:
    return _verify_tag(args, args.mac, Kind.MAC, 32, "MAC", "--mac")


def cmd_encrypt(args: argparse.Namespace) -> int:
    plaintext = _read(args.infile, "plaintext")
    aad = _aad(args)
    with _vault(args) as vault:
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
        _print_json({"key": args.name, "version": framing.unframe(kind, token)[0],
                     "ciphertext": _b64(token)}, args.out)
    else:
        _write(token, args.out, binary=True, what="ciphertext")
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    token = _read(args.infile, "ciphertext")
    aad = _aad(args)
    with _vault(args) as vault:
        plaintext = vault.decrypt(args.name, token, aad)
    if args.json:
        version = _version_of(Kind.AEAD, token) or _version_of(Kind.SEALED_BOX, token)
        _print_json({"key": args.name, "version": version, "plaintext": _b64(plaintext)},
                    args.out)
    else:
        _write(plaintext, args.out, binary=False, what="plaintext")
    return EXIT_OK


# --- stats ----------------------------------------------------------------------------------


def _bytes(n: int | None) -> str:
    if n is None:
        return "unlimited"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _opt(msg: Any, field: str) -> int | None:
    return getattr(msg, field) if msg.HasField(field) else None


def _signed(n: int) -> str:
    """A change in bytes: "+16.0 MiB", "-2.0 MiB", "no change"."""
    if not n:
        return "no change"
    return ("+" if n > 0 else "-") + _bytes(abs(n))


def render_stats(s: Stats, *, side_by_side: bool = True) -> Any:
    """The Stats message as rich tables: a heading, then one table per section.

    ``side_by_side``: the sections flow into as many columns as the width
    allows (so ``--watch`` fits a terminal); else they are stacked, one
    under the other (piped output: stable lines for grep and diff).
    """
    from rich.columns import Columns
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head: list[Any] = []
    parts: list[Any] = []
    style = "bold green" if s.protection == "secretmem" else "bold red"
    heading = head
    heading.append(Text.assemble(("secretvault", "bold"), f"  backend {s.backend}, protection ",
                                 (s.protection, style)))
    if s.protection != "secretmem":
        heading.append(Text("keys are NOT in secret memory: this backend is a model", "red"))
    heading.append(Text(""))

    def kv(title: str, rows: list[tuple[str, str]]) -> Table:
        t = Table(title=title, title_justify="left", show_header=False, box=None,
                  pad_edge=False, title_style="bold")
        t.add_column(style="dim")
        t.add_column()
        for a, b in rows:
            t.add_row(a, b)
        return t

    keys = ", ".join(f"{n:,} {t}" for t, n in sorted(s.keys_by_type.items()) if n) or "none"
    parts.append(kv("Secret memory", [
        ("keys", keys),
        ("key bytes", _bytes(s.key_bytes)),
        ("regions", str(s.regions)),
        ("pages mapped", str(s.pages_mapped)),
        ("pages resident", str(s.pages_resident)),
        ("bytes locked", _bytes(s.bytes_locked)),
        ("hibernation inhibited", "yes" if s.hibernation_inhibited else "no"),
    ]))

    ml = s.memlock
    headroom_keys = ", ".join(f"{n:,} {t}" for t, n in sorted(ml.headroom_keys.items()))
    parts.append(kv("Memlock (RLIMIT_MEMLOCK)", [
        ("soft limit", _bytes(_opt(ml, "soft"))),
        ("hard limit", _bytes(_opt(ml, "hard"))),
        ("locked (VmLck)", _bytes(ml.locked)),
        ("headroom", "unlimited" if ml.cap_ipc_lock else _bytes(_opt(ml, "headroom_bytes"))),
        ("headroom in keys", headroom_keys or "unlimited"),
        ("CAP_IPC_LOCK", "yes (limit bypassed)" if ml.cap_ipc_lock else "no"),
    ]))

    if s.HasField("memcg"):
        cg = s.memcg
        parts.append(kv(f"Memory cgroup v{cg.version}", [
            ("path", cg.path or "/"),
            ("usage", _bytes(_opt(cg, "usage")) if cg.HasField("usage") else "?"),
            ("limit", _bytes(_opt(cg, "limit"))),
            ("page cache (file)", _bytes(_opt(cg, "file")) if cg.HasField("file") else "?"),
            ("mapped file", _bytes(_opt(cg, "file_mapped"))
             if cg.HasField("file_mapped") else "?"),
            ("unevictable", _bytes(_opt(cg, "unevictable"))
             if cg.HasField("unevictable") else "?"),
        ]))

    dm = s.direct_map
    dm_rows = [
        ("counters", "kernel, since the server started" if dm.source == "kernel"
         else f"{dm.source} (simulated)"),
        ("level-2 splits (2 MiB -> 4 KiB)", str(dm.level2_splits)),
        ("level-3 splits (1 GiB -> 2 MiB)", str(dm.level3_splits)),
        ("DirectMap4k", f"{_bytes(dm.directmap_4k)} ({_signed(dm.directmap_4k_delta)})"),
        ("DirectMap2M", f"{_bytes(dm.directmap_2m)} ({_signed(dm.directmap_2m_delta)})"),
        ("DirectMap1G", f"{_bytes(dm.directmap_1g)} ({_signed(dm.directmap_1g_delta)})"),
    ]
    if dm.HasField("distinct_2m_regions"):
        dm_rows.append(("2 MiB regions holding vault pages", str(dm.distinct_2m_regions)))
    if dm.HasField("distinct_1g_regions"):
        dm_rows.append(("1 GiB regions holding vault pages", str(dm.distinct_1g_regions)))
    parts.append(kv("Direct map", dm_rows))

    if s.size_classes:
        t = Table("slot size", "pages", "slots used", "slots free", title="Size classes",
                  title_justify="left", title_style="bold", box=None, pad_edge=False)
        for c in s.size_classes:
            t.add_row(f"{c.size} B", str(c.pages), str(c.slots_used), str(c.slots_free))
        parts.append(t)
    if s.operations:
        t = Table("operation", "result", "count", title="Operations", title_justify="left",
                  title_style="bold", box=None, pad_edge=False)
        for op in s.operations:
            t.add_row(op.operation, op.result, f"{op.count:,}")
        parts.append(t)
    if s.extra:
        parts.append(kv(f"{s.backend} details",
                        [(k, f"{v:g}") for k, v in sorted(s.extra.items())]))
    if side_by_side:
        return Group(*head, Columns(parts, padding=(1, 6)))
    stacked: list[Any] = []
    for part in parts:
        stacked += [part, Text("")]
    return Group(*head, *stacked[:-1])


def stats_json(s: Stats) -> dict[str, Any]:
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(
        s, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def cmd_stats(args: argparse.Namespace) -> int:
    with _vault(args) as vault:
        if not args.watch:
            s = vault.stats()
            if args.json:
                _print_json(stats_json(s))
            else:
                console = _console()
                console.print(render_stats(s, side_by_side=console.is_terminal))
            return EXIT_OK
        updates = vault.watch_stats(args.interval)
        try:
            if args.json:
                # one JSON object per line, for tools that follow the stream
                for s in updates:
                    print(json.dumps(stats_json(s), sort_keys=True), flush=True)
            else:
                from rich.live import Live

                console = _console()
                wide = console.is_terminal
                first = next(updates, None)
                if first is not None:
                    with Live(render_stats(first, side_by_side=wide), console=console,
                              auto_refresh=False, screen=False) as live:
                        for s in updates:
                            live.update(render_stats(s, side_by_side=wide), refresh=True)
        except KeyboardInterrupt:
            return EXIT_OK  # Ctrl-C: how a watch is meant to end
        finally:
            updates.close()
    # the server ends watches when it begins to drain
    raise CliError("the vault ended the stats stream: it is shutting down",
                   "run 'secretvault stats --watch' again once it is back")


# --- serve --------------------------------------------------------------------------------


def server_config(args: argparse.Namespace) -> Any:
    """``secretvault serve``'s arguments as a :class:`secretvault.vault.server.ServerConfig`."""
    from dataclasses import replace

    from secretvault.vault.app import VaultConfig
    from secretvault.vault.sealing import Argon2Params
    from secretvault.vault.server import ServerConfig

    changes: dict[str, Any] = {"backend": args.backend}
    if args.socket:
        changes["socket"] = os.path.abspath(args.socket)
    if args.data_dir:
        changes["data_dir"] = os.path.abspath(args.data_dir)
    if args.unseal_key_file:
        changes["unseal_key_file"] = os.path.abspath(args.unseal_key_file)
    if args.passphrase_file:
        changes["passphrase_file"] = os.path.abspath(args.passphrase_file)
    if args.argon2_ops or args.argon2_mem:
        d = Argon2Params()
        changes["kdf"] = Argon2Params(args.argon2_ops or d.ops, args.argon2_mem or d.mem)
    if args.model_memory:
        changes["model_memory_bytes"] = args.model_memory
    if args.model_cma:
        changes["model_cma_bytes"] = args.model_cma
    if args.model_fallback:
        changes["model_fallback"] = True
    vault_config = replace(VaultConfig(), **changes)
    return ServerConfig(
        vault=vault_config,
        unix_socket=not args.no_unix_socket,
        tcp=args.tcp,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        policy_file=args.policy,
        audit_log=args.audit_log,
        audit_fail_open=args.audit_fail_open,
        metrics=args.metrics,
        grace_seconds=args.grace,
        max_message_bytes=args.max_message_bytes,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_streams_per_identity=args.max_streams_per_identity,
        stream_idle_seconds=args.stream_idle_seconds,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from secretvault.vault.server import run

    config = server_config(args)
    try:
        return run(config)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        if isinstance(e, PermissionError):
            fix = ("run it as a user who may write there, or choose --socket and --data-dir "
                   "you can write")
        elif isinstance(e, FileNotFoundError):
            fix = "check the path"
        else:
            fix = "check the paths given to serve"
        raise CliError(f"cannot start the vault:{where}: {e.strerror or e}", fix) from None


# --- model ----------------------------------------------------------------------------------


def _add_model(sub: Any) -> None:
    model = sub.add_parser(
        "model",
        help="the page-by-page and pooled-PMD models of secret memory",
        description="Questions for the two model backends: how the pooled-PMD (v16) and "
        "page-by-page (merged) designs of secret memory compare.",
        formatter_class=_Formatter,
    )
    msub = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True,
                                parser_class=_Parser, title="commands",
                                help="'secretvault model COMMAND --help' tells more")
    compare = msub.add_parser(
        "compare",
        help="run the same workloads on both models and report direct-map splits, "
        "memory and failures",
        description="Replay workloads on the pooled-PMD and page-by-page models and report "
        "direct-map splits, memory held and failures side by side.",
        formatter_class=_Formatter,
    )
    from secretvault.backends.model import report

    report.configure_parser(compare)
    compare.set_defaults(func=report.run)


# --- the parser ------------------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps text with line breaks (epilogs) as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """Usage errors: the usage line, then one line naming the problem and the fix."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} "
                              f"(fix: see '{self.prog} --help')\n")


def _connection_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("connection")
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--socket", metavar="PATH", default=argparse.SUPPRESS,
        help=f"the vault's Unix socket (default: ${SOCKET_ENV}, else {default_socket_path()})",
    )
    where.add_argument(
        "--connect", metavar="HOST:PORT",
        help="a vault listening on TCP with TLS instead of a socket (needs --ca-cert)",
    )
    g.add_argument("--ca-cert", metavar="FILE", help="PEM CA certificate that signed the "
                   "vault's TLS certificate (with --connect)")
    g.add_argument("--client-cert", metavar="FILE",
                   help="PEM client certificate for mutual TLS (with --client-key)")
    g.add_argument("--client-key", metavar="FILE", help="PEM key of --client-cert")
    g.add_argument("--server-name", metavar="NAME",
                   help="the name to expect in the vault's certificate, if not HOST")
    g.add_argument("--timeout", metavar="SECONDS", type=_positive_float, default=30.0,
                   help="give up on a call after this long (default: 30)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _leaf(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str,
          description: str, *, json_help: str | None = "machine-readable output (JSON)",
          epilog: str | None = None) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=_Formatter
    )
    p.set_defaults(func=func)
    if json_help:
        p.add_argument("--json", action="store_true", help=json_help)
    return p


def _io(p: argparse.ArgumentParser, what: str, out: str | None) -> None:
    p.add_argument("--in", dest="infile", metavar="FILE",
                   help=f"read the {what} from FILE (default: stdin)")
    if out:
        p.add_argument("--out", metavar="FILE", help=f"write the {out} to FILE (default: stdout)")


def _key_name(p: argparse.ArgumentParser, help: str = "the key's name") -> None:
    p.add_argument("name", metavar="NAME", help=help)


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


def build_parser() -> argparse.ArgumentParser:
    from secretvault.vault.app import BACKENDS, PASSPHRASE_ENV, default_data_dir

    parser = _Parser(
        prog=PROG,
        description="A key-holding service whose keys live only in Linux secret memory "
        "(memfd_secret). Keys never leave the vault: it signs, verifies, encrypts, decrypts "
        "and MACs in place, and reports what secret memory costs.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--socket", metavar="PATH", default=None,
                        help=f"the vault's Unix socket, for any subcommand (default: "
                        f"${SOCKET_ENV}, else {default_socket_path()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser, title="commands",
                                help="'secretvault COMMAND --help' tells more")

    # serve
    serve = sub.add_parser(
        "serve", help="run the vault server",
        description="Run the vault: unseal the key store into secret memory and serve the "
        "gRPC API on a Unix socket (and, optionally, on TCP with TLS). It prints one summary "
        "at start-up (backend and protection, memlock limit and headroom in keys, where the "
        "store and socket are) and drains in-flight calls on SIGTERM or Ctrl-C.",
        epilog=f"""\
where the unseal material comes from (first match wins):
  --unseal-key-file FILE    a 32-byte key file
  --passphrase-file FILE    a passphrase in a file
  ${PASSPHRASE_ENV}   a passphrase in the environment
With none given on the first start, the vault creates an unseal key file
(mode 0600) in the data directory and says where: fine for trying it out;
in production keep the unseal material on another machine or medium.
""",
        formatter_class=_Formatter,
    )
    serve.set_defaults(func=cmd_serve)
    serve.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                       help=f"Unix socket to listen on (default: ${SOCKET_ENV}, else "
                       f"{default_socket_path()})")
    serve.add_argument("--data-dir", metavar="DIR",
                       help=f"where the sealed key store lives (default: {default_data_dir()})")
    serve.add_argument("--backend", choices=BACKENDS, default="memfd_secret",
                       help="where keys live: memfd_secret (real secret memory, the default), "
                       "or a model for development: page-model, pooled-pmd-model "
                       "(keys NOT in secret memory)")
    serve.add_argument("--policy", metavar="FILE",
                       help="access-control policy (identities -> operations on key-name "
                       "patterns; default deny)")
    unseal = serve.add_argument_group("unseal material")
    unseal_x = unseal.add_mutually_exclusive_group()
    unseal_x.add_argument("--passphrase-file", metavar="FILE",
                          help=f"read the store's passphrase from FILE (instead of "
                          f"${PASSPHRASE_ENV})")
    unseal_x.add_argument("--unseal-key-file", metavar="FILE",
                          help="a 32-byte unseal key file (read straight into secret memory)")
    tcp = serve.add_argument_group("TCP with TLS")
    tcp.add_argument("--tcp", metavar="HOST:PORT",
                     help="also listen on HOST:PORT with TLS (needs --tls-cert and --tls-key)")
    tcp.add_argument("--tls-cert", metavar="FILE", help="PEM server certificate chain")
    tcp.add_argument("--tls-key", metavar="FILE", help="PEM server private key")
    tcp.add_argument("--client-ca", metavar="FILE",
                     help="require client certificates signed by this CA (mutual TLS)")
    tcp.add_argument("--no-unix-socket", action="store_true",
                     help="serve TCP only, not the default Unix socket")
    ops = serve.add_argument_group("operations")
    ops.add_argument("--audit-log", metavar="FILE",
                     help="append one JSON line per operation to FILE (default: stderr)")
    ops.add_argument("--audit-fail-open", action="store_true",
                     help="keep serving when the audit log cannot be written "
                     "(default: refuse calls)")
    ops.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics "
                     "(e.g. 127.0.0.1:9464)")
    ops.add_argument("--grace", type=_non_negative_float, default=10.0, metavar="SECONDS",
                     help="how long in-flight calls may finish on SIGTERM (default: 10)")
    ops.add_argument("--max-message-bytes", type=_positive_int, default=4 << 20, metavar="N",
                     help="largest request accepted, in bytes (default: 4 MiB)")
    ops.add_argument("--max-concurrent-rpcs", type=_positive_int, default=256, metavar="N",
                     help="calls in progress per listener before RESOURCE_EXHAUSTED "
                     "(default: 256)")
    ops.add_argument("--max-streams-per-identity", type=_positive_int, default=8, metavar="N",
                     help="open Stream and WatchStats calls per identity (default: 8)")
    ops.add_argument("--stream-idle-seconds", type=_positive_float, default=60.0,
                     metavar="SECONDS",
                     help="cancel a Stream that sends no request for this long (default: 60)")
    new_store = serve.add_argument_group("a new store's passphrase KDF (Argon2id)")
    new_store.add_argument("--argon2-ops", type=_positive_int, metavar="N",
                           help="opslimit (default: 3)")
    new_store.add_argument("--argon2-mem", type=_positive_int, metavar="BYTES",
                           help="memlimit in bytes (default: 64 MiB)")
    model = serve.add_argument_group("model backends (page-model, pooled-pmd-model)")
    model.add_argument("--model-memory", type=_positive_int, metavar="BYTES",
                       help="simulated RAM (default: 4 GiB)")
    model.add_argument("--model-cma", type=_positive_int, metavar="BYTES",
                       help="the pooled-PMD model's CMA pool (default: 256 MiB)")
    model.add_argument("--model-fallback", action="store_true",
                       help="pooled-PMD: fall back to order-0 pages when the pool is empty")

    # keys
    keys = sub.add_parser("keys", help="create, list, show, rotate, delete, import keys; "
                          "export public keys",
                          description="Manage keys. Key material never leaves the vault: keys "
                          "are generated inside it or imported sealed, and only public keys "
                          "can be read back.", formatter_class=_Formatter)
    ksub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True,
                               parser_class=_Parser, title="commands",
                               help="'secretvault keys COMMAND --help' tells more")

    p = _leaf(ksub, "create", cmd_keys_create, "generate a new key inside the vault",
              "Generate a new key, version 1, inside the vault's secret memory. It is "
              "acknowledged only once it is sealed in the store.")
    _key_name(p, "the new key's name: 1-128 characters from A-Z a-z 0-9 . _ - /, starting "
              "with a letter or digit")
    p.add_argument("--type", required=True, choices=KEY_TYPES, metavar="TYPE",
                   help=f"one of: {TYPES_HELP}")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="attach a label (repeatable)")
    _connection_options(p)

    p = _leaf(ksub, "list", cmd_keys_list, "list keys", "List the keys (names, types, "
              "versions; never key material).")
    p.add_argument("--prefix", default="", metavar="PREFIX",
                   help="only keys whose names start with PREFIX")
    _connection_options(p)

    p = _leaf(ksub, "show", cmd_keys_show, "show one key and its versions",
              "Show a key: its type, versions, public keys, labels.")
    _key_name(p)
    _connection_options(p)

    p = _leaf(ksub, "rotate", cmd_keys_rotate, "make a new primary version",
              "Create a new primary version of a key. New signatures, ciphertexts and MACs "
              "use it; older versions stay for decrypt and verify.")
    _key_name(p)
    _connection_options(p)

    p = _leaf(ksub, "set-min-version", cmd_keys_set_min_version,
              "refuse versions below N for decrypt and verify",
              "Set the key's minimum decryption version: decrypt and verify refuse older "
              "versions.")
    _key_name(p)
    p.add_argument("version", metavar="N", type=_positive_int, help="the minimum version")
    _connection_options(p)

    p = _leaf(ksub, "delete", cmd_keys_delete, "delete a key (or one version)",
              "Delete a key: zero every version's secret memory and remove every sealed "
              "copy. This cannot be undone.")
    _key_name(p)
    p.add_argument("--version", type=_positive_int, metavar="N",
                   help="delete only version N (not the primary: rotate first)")
    _connection_options(p)

    p = _leaf(ksub, "public", cmd_keys_public, "export a public key (ed25519, x25519)",
              "Export the public half of an Ed25519 or X25519 key.",
              epilog="example, verifying a signature with openssl:\n"
              "  secretvault keys public release --format pem --out release.pem\n"
              "  secretvault sign release --raw --in msg --out msg.sig\n"
              "  openssl pkeyutl -verify -pubin -inkey release.pem -rawin -in msg "
              "-sigfile msg.sig\n")
    _key_name(p)
    p.add_argument("--format", choices=FORMATS, default="pem", metavar="FORMAT",
                   help="raw (32 bytes), pem (SubjectPublicKeyInfo, the default), openssh "
                   "(authorized_keys line, ed25519 only) or jwk (RFC 8037)")
    p.add_argument("--version", type=_positive_int, default=0, metavar="N",
                   help="key version (default: the primary)")
    p.add_argument("--out", metavar="FILE", help="write it to FILE (default: stdout)")
    _connection_options(p)

    p = _leaf(ksub, "import", cmd_keys_import, "import existing key material, wrapped",
              "Import key material you already have as a new key. The material is sealed "
              "here to the vault's import public key (crypto_box_seal) and opened by the vault "
              "straight into secret memory: it never crosses the wire in the clear.",
              epilog="accepted key files:\n"
              "  ed25519             the 32-byte seed, or an unencrypted PKCS#8 key (PEM or DER),\n"
              "                      e.g. from 'openssl genpkey -algorithm ed25519'\n"
              "  x25519              the 32-byte secret, or an unencrypted PKCS#8 key\n"
              "  xchacha20-poly1305  the 32-byte key\n"
              "  hmac-sha256         a 16-128 byte key\n")
    _key_name(p, "the new key's name")
    p.add_argument("--type", required=True, choices=KEY_TYPES, metavar="TYPE",
                   help=f"one of: {TYPES_HELP}")
    p.add_argument("--from", dest="from_file", required=True, metavar="FILE",
                   help="the key file (see below)")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="attach a label (repeatable)")
    _connection_options(p)

    # crypto
    p = _leaf(sub, "sign", cmd_sign, "sign a message with an ed25519 key",
              "Sign a message (Ed25519). The output is a secretvault token: a 7-byte header "
              "naming the key version, then the 64-byte signature. --raw writes the bare "
              "signature, which openssl and any RFC 8032 library verify.")
    _key_name(p)
    _io(p, "message", "signature")
    p.add_argument("--raw", action="store_true",
                   help="write the bare 64-byte signature (no version header)")
    _connection_options(p)

    p = _leaf(sub, "verify", cmd_verify, "verify a signature",
              "Verify a signature made by sign (a token, or a bare 64-byte signature). Exit "
              "status 0 when it matches, 1 when it does not.")
    _key_name(p)
    _io(p, "message", None)
    p.add_argument("--signature", required=True, metavar="FILE",
                   help="the signature: a token or a bare 64-byte signature ('-': stdin)")
    p.add_argument("--key-version", type=_positive_int, metavar="N",
                   help="for a bare signature, the key version that made it "
                   "(default: the primary)")
    _connection_options(p)

    p = _leaf(sub, "encrypt", cmd_encrypt, "encrypt data to a key",
              "Encrypt with an xchacha20-poly1305 key (in the vault), or to an x25519 key "
              "(here, with its public key: a sealed box only the vault can open).")
    _key_name(p)
    _io(p, "plaintext", "ciphertext")
    aad = p.add_mutually_exclusive_group()
    aad.add_argument("--aad", metavar="TEXT",
                     help="associated data, authenticated but not encrypted")
    aad.add_argument("--aad-file", metavar="FILE", help="associated data from FILE")
    _connection_options(p)

    p = _leaf(sub, "decrypt", cmd_decrypt, "decrypt a ciphertext",
              "Decrypt a token from encrypt (xchacha20-poly1305 or an x25519 sealed box).")
    _key_name(p)
    _io(p, "ciphertext", "plaintext")
    aad = p.add_mutually_exclusive_group()
    aad.add_argument("--aad", metavar="TEXT", help="the associated data given to encrypt")
    aad.add_argument("--aad-file", metavar="FILE", help="associated data from FILE")
    _connection_options(p)

    p = _leaf(sub, "mac", cmd_mac, "compute an HMAC-SHA-256",
              "Compute an HMAC-SHA-256 of a message. The output is a token (7-byte header "
              "naming the key version, then the 32-byte MAC); --raw writes the bare MAC.")
    _key_name(p)
    _io(p, "message", "MAC")
    p.add_argument("--raw", action="store_true", help="write the bare 32-byte MAC")
    _connection_options(p)

    p = _leaf(sub, "verify-mac", cmd_verify_mac, "verify an HMAC-SHA-256",
              "Verify a MAC in constant time. Exit status 0 when it matches, 1 when it "
              "does not.")
    _key_name(p)
    _io(p, "message", None)
    p.add_argument("--mac", required=True, metavar="FILE",
                   help="the MAC: a token or a bare 32-byte MAC ('-': stdin)")
    p.add_argument("--key-version", type=_positive_int, metavar="N",
                   help="for a bare MAC, the key version that made it (default: the primary)")
    _connection_options(p)

    p = _leaf(sub, "stats", cmd_stats, "secret memory accounting, memlock headroom, "
              "direct-map splits",
              "Show what secret memory costs right now: keys and pages, RLIMIT_MEMLOCK and "
              "the headroom in keys of each type, the memory cgroup, and the kernel's "
              "direct-map splits.",
              json_help="machine-readable output (JSON; with --watch, one object per line)")
    p.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    p.add_argument("--interval", type=_positive_float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes with --watch (default: 1)")
    _connection_options(p)

    _add_model(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("secretvault")
    except PackageNotFoundError:
        return "(not installed)"


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    # grpc's C core logs some failures (a TLS handshake refused...) to fd 2 at
    # INFO level; the command reports them itself, in one line.  Read when
    # grpc initialises, so before the first channel; GRPC_VERBOSITY=DEBUG
    # in the environment still wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except CliError as e:
        return _fail(e.problem, e.fix)
    except ConnectionFailed:
        # grpc's own detail ("failed to connect to all addresses; ...") says
        # less than what is on disk: name the target, then the likely cause
        return _fail(f"ConnectionFailed: cannot reach the vault at {_target(args)}",
                     _connection_fix(args))
    except VaultError as e:
        return _fail(f"{type(e).__name__}: {e}", fix_for(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (| head): not an error worth a message
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    # Python flushes stdout again at exit and would report the broken pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
