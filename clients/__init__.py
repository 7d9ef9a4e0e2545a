"""The secretvault client library and the API package the server shares.

The public names are all here::

    from secretvault.clients import VaultClient, AsyncVaultClient, KeyNotFound

* :class:`VaultClient` / :class:`AsyncVaultClient`: connect to a Unix socket
  (``$SECRETVAULT_SOCKET`` or the server's default) or ``host:port`` with
  :class:`TlsConfig`; context managers; retries per :class:`RetryPolicy`.
* :mod:`secretvault.clients.local`: verify, export, seal and encrypt without the vault.
* :mod:`secretvault.api.errors`: the one error tree, the same names as the server's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secretvault.api.errors import (
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
    from secretvault.api._proto.secretvault.v1.stats_pb2 import Stats
    from secretvault.clients._types import (
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
    from secretvault.clients.aio import AsyncVaultClient
    from secretvault.clients.client import VaultClient

# The server imports secretvault.api.errors, secretvault.api.framing and secretvault.api._proto: the
# client classes (and grpc's channel machinery) load only when asked for.
_LAZY = {
    "VaultClient": "secretvault.clients.client",
    "AsyncVaultClient": "secretvault.clients.aio",
    "Stats": "secretvault.api._proto.secretvault.v1.stats_pb2",
    **{
        name: "secretvault.clients._types"
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
