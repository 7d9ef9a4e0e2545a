"""The client's key records: :class:`Key`, :class:`KeyVersion`, :class:`PublicKey`.

The batch operations are in :mod:`secretvault.clients._ops` and the connection
options in :mod:`secretvault.clients._options`: each loads only when a call needs it
(creating frozen dataclasses is most of what importing one costs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from secretvault.api.errors import InvalidArgument, WrongKeyType
from secretvault.clients import local


@dataclass(frozen=True, slots=True)
class KeyVersion:
    version: int
    created: datetime
    #: the raw 32-byte public key; None for symmetric keys
    public_key: bytes | None
    #: why the sealed record could not be opened at start-up (unusable), else None
    damaged: str | None = None


@dataclass(frozen=True, slots=True)
class Key:
    """A key's metadata.  Key material never crosses the API."""

    name: str
    #: "ed25519", "x25519", "xchacha20-poly1305" or "hmac-sha256"
    type: str
    created: datetime
    #: new signatures, ciphertexts and MACs use this version
    primary_version: int
    #: decrypt and verify refuse versions below this one
    min_decryption_version: int
    labels: Mapping[str, str]
    versions: tuple[KeyVersion, ...]

    def version(self, number: int = 0) -> KeyVersion:
        """Version ``number`` (0: the primary)."""
        want = number or self.primary_version
        for v in self.versions:
            if v.version == want:
                return v
        raise InvalidArgument(f"key {self.name!r} has no version {want}")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key as the vault exported it, with local helpers."""

    name: str
    type: str
    version: int
    format: str
    #: the encoded key: 32 raw bytes, PEM, an OpenSSH line or JWK JSON
    data: bytes
    #: the 32 raw bytes whatever the format (for local verify and encrypt)
    raw: bytes

    def encode(self, fmt: str, *, comment: str = "", kid: str | None = None) -> bytes:
        """The same key in another format, converted locally."""
        return local.export_public_key(self.type, self.raw, fmt, comment=comment, kid=kid)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Verify an Ed25519 signature locally, with ``cryptography``."""
        if self.type != "ed25519":
            raise WrongKeyType(f"verify needs an ed25519 key; {self.name!r} is {self.type}")
        version, _ = local.signature_payload(signature)
        if version is not None and version != self.version:
            return False
        return local.verify_signature(self.raw, message, signature)

    def encrypt(self, plaintext: bytes) -> bytes:
        """A sealed-box token only the vault can open, made without a round trip."""
        if self.type != "x25519":
            raise WrongKeyType(
                f"local encryption needs an x25519 key; {self.name!r} is {self.type}"
            )
        return local.encrypt_to(self.raw, self.version, plaintext)
