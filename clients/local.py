"""Work the client does without asking the vault.

* verify an Ed25519 signature token with ``cryptography`` (public data only);
* export a public key as raw bytes, PEM, OpenSSH or JWK;
* seal key material to the vault's import key (wrapped import): libsodium's
  ``crypto_box_seal``, which is what the vault opens straight into a slot;
* encrypt to a vault X25519 key without a round trip: a sealed box to its
  public key, framed with the key version so ``Decrypt`` picks that version.

Key material handed to :func:`seal_for_import` is the caller's own key on
its way *into* the vault, in the caller's process.  :func:`read_key_material`
returns it in a ``bytearray`` the caller can (and the CLI does) wipe after
sealing; the copies Python makes on the way (decoding PEM or PKCS#8, the
``bytes`` handed to ``crypto_box_seal``) are ordinary garbage it cannot
wipe.  Import from a short-lived process, as ``secretvault keys import``
does, and keep the source file out of reach afterwards.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import TYPE_CHECKING

from secretvault.api import framing
from secretvault.api.errors import InvalidArgument, InvalidImport, MalformedCiphertext, WrongKeyType
from secretvault.api.framing import Kind
from secretvault.api.pubkeys import ASYMMETRIC, encode_public_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# PyNaCl and cryptography load on the first call that needs them: a command
# that only talks to the vault (sign, keys list) never pays for them

KEY_TYPES = ("ed25519", "x25519", "xchacha20-poly1305", "hmac-sha256")
SIGNATURE_BYTES = 64
SEAL_OVERHEAD = 48  # crypto_box_SEALBYTES: ephemeral public key + tag
BOX_PUBLIC_KEY_BYTES = 32  # crypto_box_PUBLICKEYBYTES

#: bytes of key material each type imports (Ed25519: the RFC 8032 seed)
IMPORT_LENGTHS: dict[str, tuple[int, int]] = {
    "ed25519": (32, 32),
    "x25519": (32, 32),
    "xchacha20-poly1305": (32, 32),
    "hmac-sha256": (16, 128),
}

# PKCS#8 (RFC 8410) private keys for the two curves are one fixed DER prefix
# followed by the 32-byte key: parsing them by hand keeps the material out of
# OpenSSL's heap, where it could not be wiped.
_PKCS8_PREFIX = {
    "ed25519": bytes.fromhex("302e020100300506032b657004220420"),
    "x25519": bytes.fromhex("302e020100300506032b656e04220420"),
}
_PEM_BEGIN = b"-----BEGIN PRIVATE KEY-----"
_PEM_END = b"-----END PRIVATE KEY-----"


def check_key_type(key_type: str) -> str:
    if key_type not in KEY_TYPES:
        raise WrongKeyType(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")
    return key_type


# --- signatures -----------------------------------------------------------------


def load_public_key(public_key: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from 32 raw bytes, PEM (SPKI) or an OpenSSH line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = public_key.strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        elif data.startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data)
        elif len(public_key) == 32:
            return Ed25519PublicKey.from_public_bytes(public_key)
        else:
            raise InvalidArgument(
                "expected a 32-byte Ed25519 public key, PEM or OpenSSH; "
                f"got {len(public_key)} bytes"
            )
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"not a readable public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise WrongKeyType(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def signature_payload(signature: bytes) -> tuple[int | None, bytes]:
    """(key version or None, the 64-byte signature) of a token or a raw signature."""
    if len(signature) == SIGNATURE_BYTES:
        return None, signature
    version, raw = framing.unframe(Kind.SIGNATURE, signature)
    if len(raw) != SIGNATURE_BYTES:
        raise MalformedCiphertext(
            f"an Ed25519 signature is {SIGNATURE_BYTES} bytes after the header, got {len(raw)}"
        )
    return version, raw


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (a vault token or 64 raw bytes) signs ``message``.

    ``public_key`` is raw (32 bytes), PEM or OpenSSH.  A badly framed token
    raises :class:`~secretvault.api.errors.MalformedCiphertext`; a well-formed
    signature that does not verify returns False.
    """
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    _, raw = signature_payload(signature)
    try:
        key.verify(raw, message)
    except InvalidSignature:
        return False
    return True


# --- public keys ------------------------------------------------------------------


def export_public_key(
    key_type: str, public_key: bytes, fmt: str, *, comment: str = "", kid: str | None = None
) -> bytes:
    """A raw 32-byte public key as ``raw``, ``pem``, ``openssh`` or ``jwk``."""
    return encode_public_key(key_type, public_key, fmt, comment=comment, kid=kid)


# --- wrapped import ------------------------------------------------------------------


def check_material(key_type: str, length: int) -> None:
    lo, hi = IMPORT_LENGTHS[check_key_type(key_type)]
    if not lo <= length <= hi:
        want = f"{lo}" if lo == hi else f"{lo} to {hi}"
        what = "seed" if key_type == "ed25519" else "key"
        raise InvalidImport(f"a {key_type} {what} is {want} bytes, got {length}")


def seal_for_import(import_public_key: bytes, key_type: str, material: bytes | bytearray) -> bytes:
    """``crypto_box_seal(material, import_public_key)``: what ImportKey accepts."""
    check_material(key_type, len(material))
    import nacl.bindings

    if len(import_public_key) != BOX_PUBLIC_KEY_BYTES:
        raise InvalidArgument(f"the import key is 32 bytes, got {len(import_public_key)}")
    return nacl.bindings.crypto_box_seal(bytes(material), import_public_key)


def _pkcs8(key_type: str, der: bytes | bytearray) -> bytearray | None:
    prefix = _PKCS8_PREFIX.get(key_type)
    if prefix is None or len(der) != len(prefix) + 32 or bytes(der[: len(prefix)]) != prefix:
        return None
    return bytearray(der[len(prefix) :])


def parse_key_material(key_type: str, data: bytes | bytearray) -> bytearray:
    """The raw key material in ``data``.

    Accepted: the raw bytes (the 32-byte Ed25519 seed, the 32-byte X25519 or
    XChaCha20-Poly1305 key, a 16-128 byte HMAC key); for Ed25519 and X25519
    also an unencrypted PKCS#8 private key, PEM or DER (what
    ``openssl genpkey -algorithm ed25519`` writes).
    """
    check_key_type(key_type)
    stripped = bytes(data).strip()
    if stripped.startswith(_PEM_BEGIN):
        end = stripped.find(_PEM_END)
        if end < 0:
            raise InvalidImport("a PEM private key without its END line")
        try:
            der = bytearray(base64.b64decode(b"".join(stripped[len(_PEM_BEGIN) : end].split())))
        except binascii.Error:
            raise InvalidImport("the PEM private key's base64 does not decode") from None
        material = _pkcs8(key_type, der)
        der[:] = bytes(len(der))
        if material is None:
            raise InvalidImport(
                f"the PEM file is not an unencrypted {key_type} PKCS#8 private key"
                + ("" if key_type in _PKCS8_PREFIX else f" ({key_type} keys import as raw bytes)")
            )
        return material
    if stripped.startswith(b"-----BEGIN"):
        kind = stripped.split(b"\n", 1)[0].decode("ascii", "replace")
        raise InvalidImport(
            f"{kind}: only unencrypted PKCS#8 ('BEGIN PRIVATE KEY') or raw key files import"
        )
    material = _pkcs8(key_type, data)
    if material is not None:
        return material
    check_material(key_type, len(data))
    return bytearray(data)


def read_key_material(path: str, key_type: str) -> bytearray:
    """Read and parse a key file (see :func:`parse_key_material`)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size > 64 << 10:
            raise InvalidImport(f"{path} is {size} bytes: not a key file")
        data = bytearray(size)
        n = f.readinto(data)
    try:
        return parse_key_material(key_type, data[:n])
    finally:
        data[:] = bytes(len(data))


def wipe(buffer: bytearray) -> None:
    """Overwrite a client-side copy of key material."""
    buffer[:] = bytes(len(buffer))


# --- encrypt to an X25519 key ----------------------------------------------------------


def encrypt_to(public_key: bytes, version: int, plaintext: bytes) -> bytes:
    """A sealed-box token for the vault's X25519 key ``version``, made locally.

    Anyone with the public key can encrypt; only the vault can decrypt
    (``Decrypt`` with the key's name).  The token is the 7-byte header
    (kind ``B``, ``version``) followed by ``crypto_box_seal`` output.
    """
    import nacl.bindings

    if len(public_key) != BOX_PUBLIC_KEY_BYTES:
        raise InvalidArgument(f"an X25519 public key is 32 bytes, got {len(public_key)}")
    if version < 1:
        raise InvalidArgument("key versions start at 1")
    return framing.frame(
        Kind.SEALED_BOX, version, nacl.bindings.crypto_box_seal(plaintext, public_key)
    )


def sealed_box_payload(token: bytes) -> tuple[int, bytes]:
    """(key version, crypto_box_seal output) of a sealed-box token."""
    version, box = framing.unframe(Kind.SEALED_BOX, token)
    if len(box) < SEAL_OVERHEAD:
        raise MalformedCiphertext(f"a sealed box is at least {SEAL_OVERHEAD} bytes, got {len(box)}")
    return version, box


def is_asymmetric(key_type: str) -> bool:
    return key_type in ASYMMETRIC


__all__ = [
    "IMPORT_LENGTHS",
    "KEY_TYPES",
    "check_key_type",
    "encrypt_to",
    "export_public_key",
    "load_public_key",
    "parse_key_material",
    "read_key_material",
    "seal_for_import",
    "sealed_box_payload",
    "signature_payload",
    "verify_signature",
    "wipe",
]
