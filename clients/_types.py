"""The client's public value types: keys, public keys, batch operations, options."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

from secretvault.api.errors import InvalidArgument, VaultError, WrongKeyType
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


# --- batch operations -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sign:
    key: str
    message: bytes


@dataclass(frozen=True, slots=True)
class Verify:
    key: str
    message: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Encrypt:
    key: str
    plaintext: bytes
    associated_data: bytes = b""


@dataclass(frozen=True, slots=True)
class Decrypt:
    key: str
    ciphertext: bytes
    associated_data: bytes = b""


@dataclass(frozen=True, slots=True)
class Mac:
    key: str
    message: bytes


@dataclass(frozen=True, slots=True)
class VerifyMac:
    key: str
    message: bytes
    mac: bytes


Operation: TypeAlias = Sign | Verify | Encrypt | Decrypt | Mac | VerifyMac
#: a token (sign, encrypt, mac), a plaintext (decrypt), a verdict (verify,
#: verify_mac) or the error of that one operation
Result: TypeAlias = bytes | bool | VaultError


# --- connection options --------------------------------------------------------------

#: seconds each attempt of each call may take, unless the client is given another
DEFAULT_TIMEOUT = 30.0



@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries on UNAVAILABLE, with exponential backoff and full jitter.

    Calls that read or compute (get, list, sign, verify, encrypt, decrypt,
    MAC, stats, batch) are retried up to ``max_attempts`` in all.  Calls that
    change keys (create, import, rotate, delete, set-min-version) are retried
    only while the channel has not connected — nothing was sent — or when
    the server says it refused the call unprocessed (``ShuttingDown``);
    a connection lost after sending raises
    :class:`~secretvault.api.errors.OutcomeUnknown` instead of a blind retry.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    multiplier: float = 2.0
    #: how long a key-changing call waits for the channel to connect per attempt
    connect_wait: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidArgument("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise InvalidArgument("need 0 <= initial_backoff <= max_backoff")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for a ``host:port`` target; with ``cert`` and ``key``, mutual TLS.

    The client's certificate key is the client's own TLS credential, not a
    vault key.
    """

    #: PEM CA certificates that sign the server's certificate (None: system roots)
    ca: bytes | None = None
    #: PEM client certificate chain and its private key, for mutual TLS
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    #: the name to check in the server's certificate, if not the host
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("mutual TLS needs both a client certificate and its key")

    @classmethod
    def from_files(
        cls,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return cls(read(ca), read(cert), read(key), server_name)
