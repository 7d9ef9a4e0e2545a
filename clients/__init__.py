"""The secretvault client library: ``secretvault.clients``.

The public names are all here::

    from secretvault.clients import VaultClient, AsyncVaultClient, KeyNotFound

* :class:`VaultClient` / :class:`AsyncVaultClient`: connect to a Unix socket
  (``$SECRETVAULT_SOCKET`` or the server's default) or ``host:port`` with
  :class:`TlsConfig`; context managers; retries per :class:`RetryPolicy`.
  ``AsyncVaultClient`` (``clients/aio.py``) is the source; ``VaultClient``
  (``clients/client.py``) is generated from it by ``scripts/gen-sync-client``.
* :class:`Key`, :class:`PublicKey`, the batch operations (:class:`Sign`...) and
  :class:`Stats`: the client's own frozen records; no protobuf type is public.
* :mod:`secretvault.clients.local`: verify, export, seal and encrypt without the vault.
* the errors: :mod:`secretvault.api.errors`, the one error tree the server
  raises too, re-exported here under the same names.
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
    UnsafeSocketPath,
    VaultError,
    VersionBelowMinimum,
    VersionNotFound,
    WrongKeyType,
)

if TYPE_CHECKING:
    from secretvault.clients._ops import (
        Decrypt,
        Encrypt,
        Mac,
        Operation,
        Result,
        Sign,
        Verify,
        VerifyMac,
    )
    from secretvault.clients._options import NO_RETRY, RetryPolicy, TlsConfig
    from secretvault.clients._stats import (
        DirectMap,
        Feed,
        IdentityQuota,
        Memcg,
        Memlock,
        OperationCount,
        Process,
        SizeClass,
        Stats,
        Worker,
    )
    from secretvault.clients._types import Key, KeyVersion, PublicKey
    from secretvault.clients.aio import AsyncVaultClient
    from secretvault.clients.client import VaultClient

# Importing the package costs only the error tree: the client classes (and
# grpc's channel machinery) load when one of their names is first asked for.
_LAZY = {
    "VaultClient": "secretvault.clients.client",
    "AsyncVaultClient": "secretvault.clients.aio",
    **{
        name: "secretvault.clients._stats"
        for name in ("DirectMap", "Feed", "IdentityQuota", "Memcg", "Memlock", "OperationCount",
                     "Process", "SizeClass", "Stats", "Worker")
    },
    **{name: "secretvault.clients._types" for name in ("Key", "KeyVersion", "PublicKey")},
    **{name: "secretvault.clients._options" for name in ("NO_RETRY", "RetryPolicy", "TlsConfig")},
    **{
        name: "secretvault.clients._ops"
        for name in ("Decrypt", "Encrypt", "Mac", "Operation", "Result", "Sign", "Verify",
                     "VerifyMac")
    },
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
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
    "DirectMap",
    "Encrypt",
    "FailedPrecondition",
    "Feed",
    "IdentityQuota",
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
    "Memcg",
    "Memlock",
    "MemlockExceeded",
    "NotFound",
    "Operation",
    "OperationCount",
    "OutcomeUnknown",
    "PermissionDenied",
    "Process",
    "PublicKey",
    "ResourceExhausted",
    "Result",
    "RetryPolicy",
    "ShuttingDown",
    "Sign",
    "SizeClass",
    "Stats",
    "TlsConfig",
    "Unavailable",
    "UnsafeSocketPath",
    "VaultClient",
    "VaultError",
    "Verify",
    "VerifyMac",
    "VersionBelowMinimum",
    "VersionNotFound",
    "Worker",
    "WrongKeyType",
]
