"""Residue: after thousands of operations, no key is anywhere a reader can see.

A separate server process (``residue_server.py``), or a process embedding
the keyring (``--embedded``: ``secretvault.embedded``), opens a vault on
memfd_secret, imports four known keys through the wrapped path, operates
with them thousands of times, restarts (unsealing every key from the store),
and waits.  Then, as root, this test reads every readable mapping listed in
``/proc/PID/maps`` through ``/proc/PID/mem`` and searches it for each key and
its expanded forms:

* Ed25519: the seed, the 64-byte libsodium secret key, SHA-512(seed), its
  scalar half (raw and clamped) and its nonce-prefix half;
* X25519: the secret key, raw and clamped;
* HMAC-SHA-256: the key, and the key XOR ipad / opad blocks that HMAC hashes;
* XChaCha20-Poly1305: the key;
* the vault's KEK (Argon2id of the passphrase with the stored salt);

each whole, and each 16-byte half (a partial copy is a leak too).  Nothing may
be found, and the store file (with its WAL) must not hold any of them.

The kernel refuses ``/proc/PID/mem`` reads of secretmem mappings with EIO,
root included: the test checks that the *only* mappings it could not read
are the secretmem ones (and the kernel's [vvar]/[vsyscall] pages), so the
scan has no other hole.  The positive control runs the same server with
``--leak`` (the plaintext keys also kept in Python ``bytes``): the scan must
find every one of them there.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings as nb
import nacl.pwhash
import pytest
from nacl.signing import SigningKey, VerifyKey

from secretvault.vault.sealing import Argon2Params
from tests.unit.vault._support import wrap

ROOT = Path(__file__).resolve().parents[2]
SERVER = "tests.security.residue_server"
#: known to the test only: the server reads it from a file into secret memory
PASSPHRASE = b"rt-7f3a9c1e5b2d4086-e0d9c8b7a6f5"
#: mappings the kernel refuses to /proc/PID/mem; anything else must be readable
UNREADABLE_OK = ("/secretmem (deleted)", "[vvar]", "[vvar_vclock]", "[vsyscall]")
CHUNK = 8 << 20

pytestmark = [pytest.mark.root, pytest.mark.memfd_secret]


def _clamp(scalar: bytes) -> bytes:
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


@dataclass
class Keys:
    seed: bytes = field(default_factory=lambda: os.urandom(32))
    x25519: bytes = field(default_factory=lambda: os.urandom(32))
    xchacha: bytes = field(default_factory=lambda: os.urandom(32))
    hmac: bytes = field(default_factory=lambda: os.urandom(32))

    def material(self) -> dict[str, bytes]:
        return {
            "ed25519": self.seed,
            "x25519": self.x25519,
            "xchacha20-poly1305": self.xchacha,
            "hmac-sha256": self.hmac,
        }

    def forms(self) -> dict[str, bytes]:
        """Every form of every key that must not be found, by label."""
        pk = bytes(SigningKey(self.seed).verify_key)
        sk64 = self.seed + pk
        h = hashlib.sha512(self.seed).digest()
        # check the derivations against libsodium's own, so a wrong pattern
        # cannot make the scan pass
        assert _clamp(h[:32]) == nb.crypto_sign_ed25519_sk_to_curve25519(sk64)
        block = self.hmac.ljust(64, b"\0")
        ipad = bytes(b ^ 0x36 for b in block)
        opad = bytes(b ^ 0x5C for b in block)
        msg = b"check"
        inner = hashlib.sha256(ipad + msg).digest()
        assert hashlib.sha256(opad + inner).digest() == hmac.new(
            self.hmac, msg, hashlib.sha256).digest()
        return {
            "ed25519 seed": self.seed,
            "ed25519 64-byte secret key": sk64,
            "ed25519 SHA-512(seed)": h,
            "ed25519 scalar": h[:32],
            "ed25519 clamped scalar": _clamp(h[:32]),
            "ed25519 nonce prefix": h[32:],
            "x25519 key": self.x25519,
            "x25519 clamped key": _clamp(self.x25519),
            "xchacha key": self.xchacha,
            "hmac key": self.hmac,
            # past the key the pad blocks are constant 0x36/0x5c: search the
            # key-dependent 32 bytes
            "hmac key^ipad": ipad[:32],
            "hmac key^opad": opad[:32],
        }


#: forms whose halves are not all secret: the second half of libsodium's
#: 64-byte Ed25519 secret key is the public key (its first half is the seed,
#: whose halves are searched already)
WHOLE_ONLY = ("ed25519 64-byte secret key",)


def _patterns(forms: dict[str, bytes]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for label, value in forms.items():
        out[label] = value
        if label in WHOLE_ONLY:
            continue
        for i in range(0, len(value), 16):
            out[f"{label} [{i}:{i + 16}]"] = value[i : i + 16]
    return out


@dataclass
class Scan:
    readable_bytes: int = 0
    mappings: int = 0
    unreadable: list[str] = field(default_factory=list)
    found: dict[str, list[str]] = field(default_factory=dict)


def _maps(pid: int) -> Iterator[tuple[int, int, str, str]]:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            yield start, end, parts[1], parts[5].strip() if len(parts) > 5 else ""


def scan_process(pid: int, patterns: dict[str, bytes]) -> Scan:
    """Search every readable mapping of ``pid`` for every pattern."""
    result = Scan()
    overlap = max(len(p) for p in patterns.values()) - 1
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end, perms, path in _maps(pid):
            if perms[0] != "r":
                continue
            result.mappings += 1
            where = f"{start:#x}-{end:#x} {path or '[anon]'}"
            tail = b""
            addr = start
            while addr < end:
                n = min(CHUNK, end - addr)
                try:
                    mem.seek(addr)
                    data = mem.read(n)
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    result.unreadable.append(path or where)
                    break
                if not data:
                    result.unreadable.append(path or where)
                    break
                result.readable_bytes += len(data)
                window = tail + data
                for label, pattern in patterns.items():
                    if pattern in window:
                        result.found.setdefault(label, []).append(where)
                tail = window[-overlap:]
                addr += len(data)
    return result


def scan_files(directory: Path, patterns: dict[str, bytes]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            data = path.read_bytes()
            for label, pattern in patterns.items():
                if pattern in data:
                    found.setdefault(label, []).append(path.name)
    return found


def _kek(data_dir: Path) -> bytes:
    import sqlite3

    db = sqlite3.connect(data_dir / "keys.sqlite3")
    (raw,) = db.execute("SELECT CAST(value AS BLOB) FROM meta WHERE key = 'kdf'").fetchone()
    db.close()
    params, salt = Argon2Params.from_json(raw)
    return nacl.pwhash.argon2id.kdf(32, PASSPHRASE, salt, opslimit=params.ops, memlimit=params.mem)


@dataclass
class Run:
    scan: Scan
    files: dict[str, list[str]]
    files_after_exit: dict[str, list[str]]
    ready: dict[str, object]


def run_server(tmp_path: Path, keys: Keys, *, leak: bool, embedded: bool = False) -> Run:
    data_dir = tmp_path / ("leak" if leak else "vault")
    passphrase_file = tmp_path / ("leak.pw" if leak else "vault.pw")
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", SERVER, str(data_dir), str(passphrase_file),
         *(["--leak"] if leak else []), *(["--embedded"] if embedded else [])],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        hello = json.loads(proc.stdout.readline())
        import_public = bytes.fromhex(hello["import_public"])
        request: dict[str, object] = {
            "wrapped": {t: wrap(import_public, m).hex() for t, m in keys.material().items()}
        }
        if leak:
            request["plain"] = {t: m.hex() for t, m in keys.material().items()}
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"the server died (exit {proc.wait(timeout=10)})"
        ready = json.loads(line)
        forms = keys.forms()
        forms["vault KEK"] = _kek(data_dir)
        forms["unseal passphrase"] = PASSPHRASE
        patterns = _patterns(forms)
        scan = scan_process(proc.pid, patterns)
        files = scan_files(data_dir, patterns)
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
        return Run(scan, files, scan_files(data_dir, patterns), ready)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _check_scan_was_complete(scan: Scan) -> None:
    assert scan.readable_bytes > 10 << 20, "suspiciously little memory was read"
    assert set(scan.unreadable) <= set(UNREADABLE_OK), scan.unreadable
    # the keys do live somewhere: in secretmem mappings the scan cannot read
    assert "/secretmem (deleted)" in scan.unreadable


@pytest.mark.parametrize("embedded", [False, True], ids=["server", "embedded"])
def test_no_key_residue_in_the_server_process_or_store(tmp_path: Path, embedded: bool) -> None:
    """The server's process, and an application's that embeds the keyring
    (``secretvault.embedded``, its public methods only)."""
    keys = Keys()
    run = run_server(tmp_path, keys, leak=False, embedded=embedded)
    # the server really used these keys: its outputs match the known keys
    assert run.ready["operations"] >= 5000  # type: ignore[operator]
    VerifyKey(bytes(SigningKey(keys.seed).verify_key)).verify(
        b"residue", bytes.fromhex(str(run.ready["signature"])))
    assert run.ready["mac"] == hmac.new(keys.hmac, b"residue", hashlib.sha256).hexdigest()
    assert run.ready["leaking"] is False

    _check_scan_was_complete(run.scan)
    assert run.scan.found == {}, f"key material found in the server's memory: {run.scan.found}"
    assert run.files == {}, f"key material found in the store: {run.files}"
    assert run.files_after_exit == {}


@pytest.mark.parametrize("embedded", [False, True], ids=["server", "embedded"])
def test_positive_control_finds_keys_kept_in_python_bytes(tmp_path: Path, embedded: bool) -> None:
    keys = Keys()
    run = run_server(tmp_path, keys, leak=True, embedded=embedded)
    assert run.ready["leaking"] is True
    _check_scan_was_complete(run.scan)
    for label in ("ed25519 seed", "x25519 key", "xchacha key", "hmac key"):
        assert label in run.scan.found, f"the scan missed the leaked {label}"
    # the leak is in the process only: the store is as clean as ever
    assert run.files == {}


def test_an_embedded_import_leaves_no_copy_of_the_callers_material(tmp_path: Path) -> None:
    """``Keyring.import_key`` with the caller's only copy in a ``bytearray``:
    once the caller wipes it, the seed is nowhere in the process (the
    material is sealed in place, never copied into ``bytes``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.security.embedded_import", str(tmp_path / "data")],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seed = proc.stdout.read(32)
        assert len(seed) == 32 and proc.stdout.readline() == b"ready\n"
        patterns = _patterns({"imported ed25519 seed": seed})
        scan = scan_process(proc.pid, patterns)
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _check_scan_was_complete(scan)
    assert scan.found == {}, f"the imported material was found: {scan.found}"
