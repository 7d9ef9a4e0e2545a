"""The secretvault client library and the API package the server shares.

The public names are all here::

    from clients import VaultClient, AsyncVaultClient, KeyNotFound

* :class:`VaultClient` / :class:`AsyncVaultClient`: connect to a Unix socket
  (``$SECRETVAULT_SOCKET`` or the server's default) or ``host:port`` with
  :class:`TlsConfig`; context managers; retries per :class:`RetryPolicy`.
* :mod:`clients.local`: verify, export, seal and encrypt without the vault.
* :mod:`clients.errors`: the one error tree, the same names as the server's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clients.errors import (
    ConnectionFailed,
    DeadlineExceeded,
    DecryptionFailed,
    FailedPrecondition,
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
    ResourceExhausted,
    ShuttingDown,
    Unavailable,
    VaultError,
    VersionNotFound,
    WrongKeyType,
)

if TYPE_CHECKING:
    from clients._proto.secretvault.v1.stats_pb2 import Stats
    from clients._types import (
        NO_RETRY,
        Decrypt,
        Encrypt,
        Key,
        KeyVersion,
        Mac,
        Operation,
        PublicKey,
        Result,
        RetryPolicy,
        Sign,
        TlsConfig,
        Verify,
        VerifyMac,
    )
    from clients.aio import AsyncVaultClient
    from clients.client import VaultClient

# The server imports clients.errors, clients.framing and clients._proto: the
# client classes (and grpc's channel machinery) load only when asked for.
_LAZY = {
    "VaultClient": "clients.client",
    "AsyncVaultClient": "clients.aio",
    "Stats": "clients._proto.secretvault.v1.stats_pb2",
    **{
        name: "clients._types"
        for name in (
            "NO_RETRY", "Decrypt", "Encrypt", "Key", "KeyVersion", "Mac", "Operation",
            "PublicKey", "Result", "RetryPolicy", "Sign", "TlsConfig", "Verify", "VerifyMac",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clients' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "NO_RETRY",
    "AsyncVaultClient",
    "ConnectionFailed",
    "DeadlineExceeded",
    "Decrypt",
    "DecryptionFailed",
    "Encrypt",
    "FailedPrecondition",
    "IntegrityError",
    "InvalidArgument",
    "InvalidImport",
    "InvalidKeyName",
    "Key",
    "KeyExists",
    "KeyNotFound",
    "KeyVersion",
    "Mac",
    "MalformedCiphertext",
    "MemlockExceeded",
    "NotFound",
    "Operation",
    "OutcomeUnknown",
    "PermissionDenied",
    "PublicKey",
    "ResourceExhausted",
    "Result",
    "RetryPolicy",
    "ShuttingDown",
    "Sign",
    "Stats",
    "TlsConfig",
    "Unavailable",
    "VaultClient",
    "VaultError",
    "Verify",
    "VerifyMac",
    "VersionNotFound",
    "WrongKeyType",
]
