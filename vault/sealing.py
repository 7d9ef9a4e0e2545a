"""The key-encryption key (KEK) and sealing of key versions.

The KEK is 32 bytes in a secret slot.  It comes from one of:

* a **key file** of exactly 32 raw bytes, ``read(2)`` straight into the
  slot (a read from an ordinary fd into a secret buffer is a plain user
  copy: no Python object ever holds the bytes);
* a **passphrase**, stretched with Argon2id into the slot; the salt and
  cost parameters are stored with the store.  A passphrase *file* is read
  straight into a secret slot too; one from the environment is, unavoidably,
  already in ordinary memory.

A random check value sealed under the KEK at initialisation tells a wrong
passphrase (or key file) from a corrupted record, before anything changes.

Every key version is sealed with XChaCha20-Poly1305 under the KEK, with
associated data binding the store id, the key's name, version and type: a
record copied to another key, version, type or store does not open.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import tempfile
from dataclasses import dataclass

from backends import Slot, SlotAllocator
from backends import _sodium as na
from clients.errors import IntegrityError, InvalidArgument, WrongPassphrase

KEK_BYTES = 32
# libsodium's crypto_pwhash_argon2id_{OPS,MEM}LIMIT_{MIN,MAX} on 64-bit
_OPS_RANGE = (1, 2**32 - 1)
_MEM_RANGE = (8192, 4398046510080)
_CHECK_AD = b"secretvault/v1 kek-check"
_IMPORT_AD = b"secretvault/v1 import-key"


@dataclass(frozen=True, slots=True)
class Argon2Params:
    ops: int = 3
    mem: int = 64 << 20  # bytes

    def to_json(self, salt: bytes) -> bytes:
        return json.dumps({"alg": "argon2id13", "ops": self.ops, "mem": self.mem,
                           "salt": salt.hex()}).encode()

    @staticmethod
    def from_json(raw: bytes) -> tuple[Argon2Params, bytes]:
        """The store's parameters and salt; :class:`IntegrityError` naming them
        when the record does not parse or is out of libsodium's range (a
        corrupted record must not reach crypto_pwhash as a huge or negative
        cost)."""
        try:
            d = json.loads(raw)
            ops, mem, salt = d["ops"], d["mem"], bytes.fromhex(d["salt"])
            if d.get("alg", "argon2id13") != "argon2id13":
                raise ValueError(f"algorithm {d['alg']!r} is not argon2id13")
            if not (isinstance(ops, int) and isinstance(mem, int)):
                raise ValueError("ops and mem must be integers")
            if not _OPS_RANGE[0] <= ops <= _OPS_RANGE[1]:
                raise ValueError(f"ops {ops} is outside {_OPS_RANGE[0]}..{_OPS_RANGE[1]}")
            if not _MEM_RANGE[0] <= mem <= _MEM_RANGE[1]:
                raise ValueError(f"mem {mem} is outside {_MEM_RANGE[0]}..{_MEM_RANGE[1]}")
            if len(salt) != na.PWHASH_SALTBYTES:
                raise ValueError(f"the salt is {len(salt)} bytes, not {na.PWHASH_SALTBYTES}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # ValueError covers JSONDecodeError, UnicodeDecodeError and bad hex
            why = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise IntegrityError(
                f"the store's KDF parameters (Argon2id, the 'kdf' record) do not parse: "
                f"{why[:200]}. Without them the passphrase cannot unseal the store: restore "
                "it from a backup") from None
        return Argon2Params(ops, mem), salt


@dataclass(frozen=True, slots=True)
class UnsealSource:
    """Where the KEK comes from: exactly one of the three.

    ``passphrase_file`` is read straight into secret memory (trailing
    newline dropped), so the passphrase never becomes a Python object;
    ``passphrase`` (from the environment or the API) already is one.
    """

    passphrase: bytes | None = None
    key_file: str | None = None
    passphrase_file: str | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.passphrase, self.key_file, self.passphrase_file) if x is not None]
        if len(given) != 1:
            raise InvalidArgument(
                "give exactly one of a passphrase, a passphrase file or a key file"
            )

    @property
    def kind(self) -> str:
        return "keyfile" if self.key_file is not None else "passphrase"


def read_key_file(path: str, slot: Slot) -> None:
    """Read exactly 32 bytes from ``path`` straight into ``slot``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_size != KEK_BYTES:
            raise WrongPassphrase(
                f"the unseal key file {path} must hold exactly {KEK_BYTES} raw bytes "
                f"(it has {st.st_size})"
            )
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise WrongPassphrase(
                f"the unseal key file {path} is readable by others "
                f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it"
            )
        got = os.readv(fd, [na.ffi.buffer(slot.ptr, KEK_BYTES)])
        if got != KEK_BYTES:
            raise WrongPassphrase(f"short read from the unseal key file {path}")
    finally:
        os.close(fd)


def create_key_file(path: str, allocator: SlotAllocator) -> None:
    """Write 32 fresh random bytes to a new 0600 file, from secret memory.

    The file appears under ``path`` only once complete: the bytes are written
    and fsynced under a temporary name, then hard-linked into place (which,
    like ``O_EXCL``, fails if ``path`` exists).  A process killed half-way
    leaves at most a stray temporary file, never a short key file that the
    next start would refuse forever.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".unseal-key.", dir=directory)  # 0600
    try:
        try:
            with allocator.allocate(KEK_BYTES) as slot:
                na.randombytes_buf(slot.ptr, KEK_BYTES)
                if os.writev(fd, [na.ffi.buffer(slot.ptr, KEK_BYTES)]) != KEK_BYTES:
                    raise OSError("short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    # the new directory entry must survive a power cut too
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


MAX_PASSPHRASE_BYTES = 256


def read_passphrase_file(path: str, slot: Slot) -> int:
    """Read a passphrase file straight into ``slot``; returns its length.

    One trailing newline (``\\n`` or ``\\r\\n``) is not part of the passphrase.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > slot.size:
            raise InvalidArgument(
                f"the passphrase file {path} is {size} bytes; at most {slot.size} are allowed"
            )
        n = os.readv(fd, [na.ffi.buffer(slot.ptr, slot.size)])
    finally:
        os.close(fd)
    ptr = slot.ptr
    for end in (b"\n"[0], b"\r"[0]):
        if n and ptr[n - 1] == end:
            n -= 1
    if n == 0:
        raise InvalidArgument(f"the passphrase file {path} is empty")
    return n


def version_ad(store_id: bytes, name: str, version: int, key_type: str) -> bytes:
    """Associated data of a sealed version: length-prefixed, unambiguous."""
    fields = [b"secretvault/v1 key", store_id, name.encode(), key_type.encode()]
    return b"".join(struct.pack(">H", len(f)) + f for f in fields) + struct.pack(">I", version)


class Kek:
    """The key-encryption key, in a secret slot."""

    def __init__(self, slot: Slot) -> None:
        self._slot = slot

    @classmethod
    def derive(
        cls, allocator: SlotAllocator, source: UnsealSource, kdf: tuple[Argon2Params, bytes] | None
    ) -> Kek:
        slot = allocator.allocate(KEK_BYTES)
        try:
            if source.key_file is not None:
                read_key_file(source.key_file, slot)
            elif source.passphrase_file is not None:
                assert kdf is not None
                params, salt = kdf
                with allocator.allocate(MAX_PASSPHRASE_BYTES) as pw_slot:
                    n = read_passphrase_file(source.passphrase_file, pw_slot)
                    na.crypto_pwhash_argon2id(
                        slot.ptr, KEK_BYTES, pw_slot.ptr, n, salt, params.ops, params.mem
                    )
            else:
                assert source.passphrase is not None and kdf is not None
                params, salt = kdf
                pw = source.passphrase
                buf = na.ffi.from_buffer(pw)
                na.crypto_pwhash_argon2id(
                    slot.ptr, KEK_BYTES, buf, len(pw), salt, params.ops, params.mem
                )
        except BaseException:
            slot.free()
            raise
        return cls(slot)

    def seal(self, secret: Slot, length: int, ad: bytes) -> tuple[bytes, bytes]:
        nonce = na.random_bytes(na.AEAD_XCHACHA_NPUBBYTES)
        return nonce, na.aead_xchacha_encrypt_from(self._slot.ptr, nonce, secret.ptr, length, ad)

    def unseal_into(self, out: Slot, nonce: bytes, sealed: bytes, ad: bytes) -> int:
        """Open ``sealed`` straight into ``out``; returns the key length."""
        length = len(sealed) - na.AEAD_XCHACHA_ABYTES
        if not 0 < length <= out.size or not na.aead_xchacha_decrypt_into(
            out.ptr, length, self._slot.ptr, nonce, sealed, ad
        ):
            raise IntegrityError("sealed record failed authentication")
        return length

    def make_check(self) -> bytes:
        nonce = na.random_bytes(na.AEAD_XCHACHA_NPUBBYTES)
        return nonce + na.aead_xchacha_encrypt(self._slot.ptr, nonce, b"", _CHECK_AD)

    def verify_check(self, check: bytes) -> bool:
        n = na.AEAD_XCHACHA_NPUBBYTES
        try:
            na.aead_xchacha_decrypt(self._slot.ptr, check[:n], check[n:], _CHECK_AD)
        except Exception:
            return False
        return True

    def close(self) -> None:
        if not self._slot.freed:
            self._slot.free()


IMPORT_KEY_AD = _IMPORT_AD
