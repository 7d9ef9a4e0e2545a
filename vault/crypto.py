"""In-place cryptography: every operation reads the key through a slot pointer.

The functions here take :class:`backends.Slot` handles for key material and
``bytes`` only for public data (messages, public keys, ciphertexts).  No
key is ever copied into a Python object: libsodium generates into, opens
into, and signs/decrypts/MACs from the secret page itself.
"""

from __future__ import annotations

import enum

from secretvault.api.errors import InvalidImport, WrongKeyType
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


def require(key_type: KeyType, wanted: KeyType | tuple[KeyType, ...], op: str, name: str) -> None:
    allowed = wanted if isinstance(wanted, tuple) else (wanted,)
    if key_type not in allowed:
        kinds = " or ".join(t.value for t in allowed)
        raise WrongKeyType(f"{op} needs a {kinds} key; {name!r} is {key_type.value}")


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


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    return na.crypto_sign_verify_detached(signature, message, public)


def open_sealed_box(slot: Slot, public: bytes, box: bytes) -> bytes:
    return na.crypto_box_seal_open(box, public, slot.ptr)


def aead_encrypt(slot: Slot, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || ciphertext; the nonce is random (192 bits: safe to pick at random)."""
    nonce = na.random_bytes(na.AEAD_XCHACHA_NPUBBYTES)
    return nonce + na.aead_xchacha_encrypt(slot.ptr, nonce, plaintext, aad)


def aead_decrypt(slot: Slot, payload: bytes, aad: bytes) -> bytes:
    n = na.AEAD_XCHACHA_NPUBBYTES
    return na.aead_xchacha_decrypt(slot.ptr, payload[:n], payload[n:], aad)


def hmac_sha256(slot: Slot, key_length: int, scratch: Slot, message: bytes) -> bytes:
    return na.hmacsha256(scratch.ptr, slot.ptr, key_length, message)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return na.constant_time_equal(a, b)
