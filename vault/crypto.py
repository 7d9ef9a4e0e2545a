"""The safe layer over libsodium: every call the vault makes, on slot handles.

This is the one vault module that imports the binding layer
(``secretvault.backends._sodium``: thin functions named after the C calls);
``tests/unit/vault/test_safe_layer.py`` holds every other vault module to
that.  The functions here take :class:`secretvault.backends.Slot` handles for key
material and ``bytes`` only for public data (messages, public keys,
ciphertexts, nonces, salts).  No secret is ever copied into a Python
object: libsodium generates into, opens into, derives into, and
signs/decrypts/MACs from the secret page itself, and file descriptors are
read into and written from it directly.

Each function is one binding call (or two) over a slot's pointer: no copy
and no allocation that the bare call would not make, since sign, decrypt
and MAC are on every request's path.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Sequence

from secretvault.api.errors import DecryptionFailed, InvalidImport, WrongKeyType
from secretvault.backends import KEY_SLOT_SIZES, Slot
from secretvault.backends import _sodium as na


class KeyType(enum.StrEnum):
    ED25519 = "ed25519"
    X25519 = "x25519"
    XCHACHA20_POLY1305 = "xchacha20-poly1305"
    HMAC_SHA256 = "hmac-sha256"

    @classmethod
    def parse(cls, value: str) -> KeyType:
        try:
            return cls(value)
        except ValueError:
            raise WrongKeyType(
                f"unknown key type {value!r}; use one of {', '.join(t.value for t in cls)}"
            ) from None

    @classmethod
    def lookup(cls, value: str) -> KeyType | None:
        """The type named ``value``, or None (a stored row naming no known type)."""
        try:
            return cls(value)
        except ValueError:
            return None

    @property
    def asymmetric(self) -> bool:
        return self in (KeyType.ED25519, KeyType.X25519)


#: bytes each key type occupies in its slot (libsodium's in-memory form)
SLOT_BYTES: dict[KeyType, int] = {KeyType(t): n for t, n in KEY_SLOT_SIZES.items()}

#: what a wrapped import carries (before sealing): Ed25519 imports the
#: 32-byte RFC 8032 seed; HMAC keys may be 16 to 128 bytes (RFC 2104 allows
#: any length; shorter than 16 is refused as too weak)
IMPORT_BYTES: dict[KeyType, tuple[int, int]] = {
    KeyType.ED25519: (na.SIGN_SEEDBYTES, na.SIGN_SEEDBYTES),
    KeyType.X25519: (32, 32),
    KeyType.XCHACHA20_POLY1305: (32, 32),
    KeyType.HMAC_SHA256: (16, 128),
}

#: how many bytes a sealed version of each type may hold once opened: the
#: slot form for fixed-size keys, any importable length for HMAC.  A stored
#: record outside this range is damaged, and is refused before a slot is
#: sized from it.
STORED_BYTES: dict[KeyType, tuple[int, int]] = {
    kt: IMPORT_BYTES[kt] if kt is KeyType.HMAC_SHA256 else (n, n) for kt, n in SLOT_BYTES.items()
}

OPERATIONS: dict[str, KeyType] = {
    "sign": KeyType.ED25519,
    "verify": KeyType.ED25519,
    "encrypt": KeyType.XCHACHA20_POLY1305,
    "mac": KeyType.HMAC_SHA256,
    "verify_mac": KeyType.HMAC_SHA256,
}

#: XChaCha20-Poly1305: the nonce before, and the tag inside, every ciphertext
NONCE_BYTES = na.AEAD_XCHACHA_NPUBBYTES
TAG_BYTES = na.AEAD_XCHACHA_ABYTES
#: what crypto_box_seal adds to its plaintext (ephemeral public key and tag)
SEALED_BOX_BYTES = na.BOX_SEALBYTES
#: an HMAC-SHA-256 tag, and its hash state (secret: it holds the key's pads)
MAC_BYTES = na.HMACSHA256_BYTES
HMAC_STATE_BYTES = na.HMACSHA256_STATEBYTES
#: an Argon2id salt
SALT_BYTES = na.PWHASH_SALTBYTES


def require(key_type: KeyType, wanted: KeyType | tuple[KeyType, ...], op: str, name: str) -> None:
    allowed = wanted if isinstance(wanted, tuple) else (wanted,)
    if key_type not in allowed:
        kinds = " or ".join(t.value for t in allowed)
        raise WrongKeyType(f"{op} needs a {kinds} key; {name!r} is {key_type.value}")


# --- randomness ---------------------------------------------------------------------


#: public randomness (nonces, salts, store ids): ``random_bytes(n)``.  Public
#: data in and out, so the binding itself is the safe function (no wrapper
#: frame on the unseal and encrypt paths)
random_bytes = na.random_bytes


def fill_random(slot: Slot, n: int) -> None:
    """``n`` random bytes straight into ``slot`` (a new secret)."""
    na.randombytes_buf(slot.ptr, n)


# --- generation and import --------------------------------------------------------


def generate(key_type: KeyType, slot: Slot) -> bytes | None:
    """Fill ``slot`` with a fresh key; return its public key, if any."""
    if key_type is KeyType.ED25519:
        return na.crypto_sign_keypair(slot.ptr)
    na.randombytes_buf(slot.ptr, SLOT_BYTES[key_type])
    if key_type is KeyType.X25519:
        return na.crypto_scalarmult_base(slot.ptr)
    return None


def derive_public(key_type: KeyType, slot: Slot) -> bytes | None:
    if key_type is KeyType.ED25519:
        return na.crypto_sign_ed25519_sk_to_pk(slot.ptr)
    if key_type is KeyType.X25519:
        return na.crypto_scalarmult_base(slot.ptr)
    return None


def open_sealed_box_into(secret: Slot, public: bytes, box: bytes, out: Slot, length: int) -> None:
    """Open a sealed box of ``length`` bytes of key material straight into
    ``out``: wrapped import.  :class:`InvalidImport` when it does not open
    (``out`` is then zeroed)."""
    na.crypto_box_seal_open_into(out.ptr, length, box, public, secret.ptr)


def wrapped_length(key_type: KeyType, wrapped: bytes) -> int:
    """How many bytes of key material ``wrapped`` (a sealed box) carries;
    :class:`InvalidImport` unless that is what a ``key_type`` key imports as."""
    lo, hi = IMPORT_BYTES[key_type]
    length = len(wrapped) - SEALED_BOX_BYTES
    if not lo <= length <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise InvalidImport(
            f"a wrapped {key_type.value} key is {want} bytes sealed (+{SEALED_BOX_BYTES}); "
            f"got {len(wrapped)} bytes"
        )
    return length


def expand_import(key_type: KeyType, opened: Slot, length: int, slot: Slot) -> bytes | None:
    """Turn imported material (in ``opened``) into the key's slot form."""
    lo, hi = IMPORT_BYTES[key_type]
    if not lo <= length <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise InvalidImport(f"a {key_type.value} key imports as {want} bytes, got {length}")
    if key_type is KeyType.ED25519:
        pk = na.ffi.new("unsigned char[32]")
        na.crypto_sign_seed_keypair(pk, slot.ptr, opened.ptr)
        return bytes(pk)
    na.ffi.memmove(slot.ptr, opened.ptr, length)
    return derive_public(key_type, slot)


# --- operations ---------------------------------------------------------------


def sign(slot: Slot, message: bytes) -> bytes:
    return na.crypto_sign_detached(slot.ptr, message)


def sign_each(slot: Slot, messages: Sequence[bytes]) -> list[bytes]:
    return na.crypto_sign_detached_each(slot.ptr, messages)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    return na.crypto_sign_verify_detached(signature, message, public)


def open_sealed_box(slot: Slot, public: bytes, box: bytes) -> bytes:
    return na.crypto_box_seal_open(box, public, slot.ptr)


def aead_encrypt(slot: Slot, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || ciphertext; the nonce is random (192 bits: safe to pick at random)."""
    nonce = na.random_bytes(NONCE_BYTES)
    return nonce + na.aead_xchacha_encrypt(slot.ptr, nonce, plaintext, aad)


def aead_decrypt(slot: Slot, payload: bytes, aad: bytes) -> bytes:
    """Open ``nonce || ciphertext`` (public data in, public data out)."""
    if len(payload) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed("the ciphertext is shorter than its 24-byte nonce and 16-byte tag")
    return na.aead_xchacha_decrypt(slot.ptr, payload[:NONCE_BYTES], payload[NONCE_BYTES:], aad)


def hmac_sha256(slot: Slot, key_length: int, scratch: Slot, message: bytes) -> bytes:
    """The tag of ``message`` under the key in ``slot``; ``scratch`` (of
    :data:`HMAC_STATE_BYTES`) is secret memory for the hash state, wiped after."""
    return na.hmacsha256(scratch.ptr, slot.ptr, key_length, message)


#: ``constant_time_equal(a, b)`` on public tags: the binding itself, as above
constant_time_equal = na.constant_time_equal


# --- keys that protect keys: sealing, subkeys, passphrases ----------------------------


def seal(key: Slot, secret: Slot, length: int, ad: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of the first ``length`` bytes of ``secret``, read
    through its pointer, under the key in ``key``; the nonce is random."""
    nonce = na.random_bytes(NONCE_BYTES)
    return nonce, na.aead_xchacha_encrypt_from(key.ptr, nonce, secret.ptr, length, ad)


def open_into(key: Slot, out: Slot, length: int, nonce: bytes, sealed: bytes, ad: bytes) -> bool:
    """Open ``sealed`` (``length`` bytes once open) straight into ``out``.

    False (and ``out`` left zeroed) when it does not authenticate.
    """
    return na.aead_xchacha_decrypt_into(out.ptr, length, key.ptr, nonce, sealed, ad)


def hmac_sha256_into(out: Slot, key: Slot, key_length: int, scratch: Slot,
                     message: bytes) -> None:
    """The tag of ``message`` written straight into ``out`` (32 bytes): a
    subkey derived from a key in secret memory.  ``scratch`` as for
    :func:`hmac_sha256`."""
    na.hmacsha256_into(out.ptr, scratch.ptr, key.ptr, key_length, message)


def argon2id_into(out: Slot, length: int, passphrase: Slot | bytes, passphrase_length: int,
                  salt: bytes, ops: int, mem: int) -> None:
    """Argon2id of the passphrase, ``length`` bytes straight into ``out``.

    A passphrase in a slot is read through its pointer; one given as
    ``bytes`` (from the environment or the API) is passed without a copy.
    """
    source = passphrase.ptr if isinstance(passphrase, Slot) else na.ffi.from_buffer(passphrase)
    na.crypto_pwhash_argon2id(out.ptr, length, source, passphrase_length, salt, ops, mem)


# --- file descriptors and secret memory ------------------------------------------------

# A read(2) from an ordinary fd into a secret buffer, or a write(2) from
# one, is a plain user copy in the kernel: the bytes go between the page
# cache and the slot's page with no Python object in between.  cffi's
# buffer is a view over the slot, not a copy of it.


def read_into(fd: int, slot: Slot, n: int) -> int:
    """``readv(2)`` up to ``n`` bytes from ``fd`` straight into ``slot``; returns the count."""
    return os.readv(fd, [na.ffi.buffer(slot.ptr, n)])


def write_from(fd: int, slot: Slot, n: int) -> int:
    """``writev(2)`` the first ``n`` bytes of ``slot`` to ``fd``; returns the count."""
    return os.writev(fd, [na.ffi.buffer(slot.ptr, n)])


def trim_newline(slot: Slot, n: int) -> int:
    """The length of the first ``n`` bytes of ``slot`` without one trailing
    newline (``\\n`` or ``\\r\\n``): a passphrase read from a file."""
    ptr = slot.ptr
    for end in (b"\n"[0], b"\r"[0]):
        if n and ptr[n - 1] == end:
            n -= 1
    return n


# --- sockets and secret memory ---------------------------------------------------------

# recv(2) into a secret buffer is the same plain user copy as read(2): the
# bytes go from the socket's kernel buffer to the slot's page, with no Python
# object in between (the memoryview is over the slot, not a copy of it).  The
# SSH agent receives a private key this way, straight from its client.


def recv_into(sock: socket.socket, slot: Slot, n: int, offset: int = 0) -> bool:
    """``recv(2)`` exactly ``n`` bytes from ``sock`` into ``slot`` at ``offset``.

    False when the peer closed first; the socket's timeout applies to each read.
    """
    view = memoryview(na.ffi.buffer(slot.ptr + offset, n))
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return False
        got += k
    return True


def slots_equal(a: Slot, b: Slot, n: int) -> bool:
    """Whether the first ``n`` bytes of two slots are equal, in constant time."""
    return na.sodium_memcmp(a.ptr, b.ptr, n)
