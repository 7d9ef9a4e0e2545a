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
Its associated data also says whether the store's key rows are
authenticated (see below): a store written before row authentication has
the v1 check, and is migrated on its first unseal.

Every key version is sealed with XChaCha20-Poly1305 under the KEK, with
associated data binding the store id, the key's name, version and type: a
record copied to another key, version, type or store does not open.

The rest of a key's row (created time, primary and minimum decryption
version, labels) and its *set* of version records are authenticated as a
whole by a row MAC: HMAC-SHA-256, under a key derived from the KEK into a
secret slot, over a length-prefixed encoding of those fields and one digest
per version record (:func:`row_mac_message`).  Rolling a rotation back,
lowering the minimum decryption version, editing labels or deleting a
version row by hand then fails the check and the key loads as damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from secretvault.api.errors import (
    DecryptionFailed,
    IntegrityError,
    InvalidArgument,
    WrongPassphrase,
)
from secretvault.backends import Slot, SlotAllocator
from secretvault.vault import crypto

KEK_BYTES = 32
# libsodium's crypto_pwhash_argon2id_{OPS,MEM}LIMIT_{MIN,MAX} on 64-bit
_OPS_RANGE = (1, 2**32 - 1)
_MEM_RANGE = (8192, 4398046510080)
_CHECK_AD = b"secretvault/v1 kek-check"
#: the check of a store whose key rows carry a row MAC: once a store has it,
#: a key row without a MAC is damaged, not a row from before the change
#: (the check cannot be forged without the KEK, so the marker cannot be
#: turned back to v1 by editing the file -- only by restoring an old copy)
_CHECK_AD_V2 = b"secretvault/v2 kek-check, key rows authenticated"
_ROW_MAC_KEY_INFO = b"secretvault/v1 row-mac key"
_ROW_MAC_DOMAIN = b"secretvault/v1 key row"
ROW_MAC_BYTES = crypto.MAC_BYTES
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
            if len(salt) != crypto.SALT_BYTES:
                raise ValueError(f"the salt is {len(salt)} bytes, not {crypto.SALT_BYTES}")
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
        got = crypto.read_into(fd, slot, KEK_BYTES)
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
                crypto.fill_random(slot, KEK_BYTES)
                if crypto.write_from(fd, slot, KEK_BYTES) != KEK_BYTES:
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
        n = crypto.read_into(fd, slot, slot.size)
    finally:
        os.close(fd)
    n = crypto.trim_newline(slot, n)
    if n == 0:
        raise InvalidArgument(f"the passphrase file {path} is empty")
    return n


def version_ad(store_id: bytes, name: str, version: int, key_type: str) -> bytes:
    """Associated data of a sealed version: length-prefixed, unambiguous."""
    fields = [b"secretvault/v1 key", store_id, name.encode(), key_type.encode()]
    return b"".join(struct.pack(">H", len(f)) + f for f in fields) + struct.pack(">I", version)


def _lp(field: bytes) -> bytes:
    return struct.pack(">I", len(field)) + field


def _text(value: str) -> bytes:
    # labels come from JSON, which may carry lone surrogates: encode them
    # losslessly rather than fail
    return _lp(value.encode("utf-8", "surrogatepass"))


def version_digest(version: int, created: float, public_key: bytes | None, nonce: bytes,
                   sealed: bytes) -> bytes:
    """SHA-256 of one version record as stored (public data): what the row
    MAC covers for it.  The sealed bytes are included so that an older
    sealed record with the same name, version and type (from a deleted and
    recreated key) cannot be put back in place of the current one."""
    return hashlib.sha256(
        b"secretvault/v1 version record"
        + struct.pack(">Id", version, created)
        + (b"\x00" if public_key is None else b"\x01" + _lp(public_key))
        + _lp(nonce) + _lp(sealed)
    ).digest()


def row_mac_message(
    store_id: bytes, name: str, key_type: str, created: float, primary_version: int,
    min_decryption_version: int, labels: Mapping[str, str],
    versions: Iterable[tuple[int, bytes]],
) -> bytes:
    """The canonical, length-prefixed encoding a key row's MAC is taken over.

    ``versions`` are (version number, :func:`version_digest`) pairs; they and
    the labels are sorted here, so the encoding does not depend on the order
    rows come back in.
    """
    parts = [_lp(_ROW_MAC_DOMAIN), _lp(store_id), _text(name), _text(key_type),
             struct.pack(">dII", created, primary_version, min_decryption_version),
             struct.pack(">I", len(labels))]
    parts += [_text(k) + _text(v) for k, v in sorted(labels.items())]
    vs = sorted(versions)
    parts.append(struct.pack(">I", len(vs)))
    parts += [struct.pack(">I", n) + _lp(d) for n, d in vs]
    return b"".join(parts)


class RowMacKey:
    """The key-row MAC key: HMAC-SHA-256(KEK, a fixed label), in a secret slot.

    Derived once per unseal; the HMAC state (which holds the key's pads) is
    secret scratch too.  Tags are public.
    """

    def __init__(self, allocator: SlotAllocator, kek: Slot) -> None:
        self._key = allocator.allocate(ROW_MAC_BYTES)
        try:
            self._state = allocator.allocate(crypto.HMAC_STATE_BYTES)
        except BaseException:
            self._key.free()
            raise
        self._lock = threading.Lock()
        try:
            crypto.hmac_sha256_into(self._key, kek, KEK_BYTES, self._state, _ROW_MAC_KEY_INFO)
        except BaseException:
            self.close()
            raise

    def mac(self, message: bytes) -> bytes:
        with self._lock:
            return crypto.hmac_sha256(self._key, ROW_MAC_BYTES, self._state, message)

    def verify(self, message: bytes, tag: bytes) -> bool:
        return crypto.constant_time_equal(self.mac(message), tag)

    def close(self) -> None:
        for slot in (self._key, getattr(self, "_state", None)):
            if slot is not None and not slot.freed:
                slot.free()


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
                    crypto.argon2id_into(slot, KEK_BYTES, pw_slot, n, salt, params.ops,
                                         params.mem)
            else:
                assert source.passphrase is not None and kdf is not None
                params, salt = kdf
                pw = source.passphrase
                crypto.argon2id_into(slot, KEK_BYTES, pw, len(pw), salt, params.ops, params.mem)
        except BaseException:
            slot.free()
            raise
        return cls(slot)

    def seal(self, secret: Slot, length: int, ad: bytes) -> tuple[bytes, bytes]:
        return crypto.seal(self._slot, secret, length, ad)

    def unseal_into(self, out: Slot, nonce: bytes, sealed: bytes, ad: bytes) -> int:
        """Open ``sealed`` straight into ``out``; returns the key length."""
        length = len(sealed) - crypto.TAG_BYTES
        if not 0 < length <= out.size or not crypto.open_into(
            self._slot, out, length, nonce, sealed, ad
        ):
            raise IntegrityError("sealed record failed authentication")
        return length

    def row_mac_key(self, allocator: SlotAllocator) -> RowMacKey:
        return RowMacKey(allocator, self._slot)

    def make_check(self) -> bytes:
        """A check value of the current format (key rows authenticated)."""
        return crypto.aead_encrypt(self._slot, b"", _CHECK_AD_V2)

    def check_version(self, check: bytes) -> int | None:
        """2: the check opens and the store's key rows are authenticated;
        1: it opens, and the store predates row MACs; None: wrong KEK (or a
        corrupted check)."""
        for version, ad in ((2, _CHECK_AD_V2), (1, _CHECK_AD)):
            try:
                crypto.aead_decrypt(self._slot, check, ad)
            except DecryptionFailed:
                pass  # not this one
            else:
                return version
        return None

    def close(self) -> None:
        if not self._slot.freed:
            self._slot.free()


IMPORT_KEY_AD = _IMPORT_AD
