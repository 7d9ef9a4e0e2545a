"""The one error tree of secretvault, shared by the server and its clients.

Every error the vault raises is a :class:`VaultError`.  The server maps each
class to one gRPC status code (``STATUS`` below, read by ``secretvault.vault.errors``);
the client maps the status and the class name carried in the trailing
metadata back to the same class, so a caller catches ``KeyNotFound`` whether
the keyring is in-process or across a socket.

This module imports nothing: the backends, the server and the client all
depend on it, and it depends on none of them.
"""

from __future__ import annotations

#: the trailing-metadata key the server names an error's class in
#: (``secretvault-error: KeyNotFound``) and the client reads it back from
ERROR_METADATA_KEY = "secretvault-error"


class VaultError(Exception):
    """Root of every error secretvault raises."""

    #: the gRPC status code name this error is reported with
    status: str = "INTERNAL"


# --- INVALID_ARGUMENT -------------------------------------------------------


class InvalidArgument(VaultError):
    """The request itself is wrong: fix it before retrying."""

    status = "INVALID_ARGUMENT"


class InvalidKeyName(InvalidArgument):
    """A key name outside the documented character set or length."""


class WrongKeyType(InvalidArgument):
    """The operation does not exist for this key's type."""


class MalformedCiphertext(InvalidArgument):
    """A ciphertext, signature or MAC that is truncated or badly framed."""


class DecryptionFailed(InvalidArgument):
    """Authentication of a ciphertext failed: wrong key, or tampered data."""


class InvalidImport(InvalidArgument):
    """A wrapped import that does not open or has the wrong length."""


# --- NOT_FOUND / ALREADY_EXISTS -------------------------------------------------


class NotFound(VaultError):
    status = "NOT_FOUND"


class KeyNotFound(NotFound):
    """No key of that name."""


class VersionNotFound(NotFound):
    """The key exists but not that version (never made, or deleted)."""


class KeyExists(VaultError):
    """A key of that name already exists."""

    status = "ALREADY_EXISTS"


# --- PERMISSION_DENIED ------------------------------------------------------------


class PermissionDenied(VaultError):
    """The caller's identity may not perform this operation on this key."""

    status = "PERMISSION_DENIED"


class Unauthenticated(PermissionDenied):
    """The caller proved no usable identity (a client certificate without subject)."""

    status = "UNAUTHENTICATED"


# --- RESOURCE_EXHAUSTED -----------------------------------------------------------


class ResourceExhausted(VaultError):
    status = "RESOURCE_EXHAUSTED"


class MemlockExceeded(ResourceExhausted):
    """mmap of secret memory refused: RLIMIT_MEMLOCK would be exceeded."""


class SecretMemoryExhausted(ResourceExhausted):
    """The kernel (or the model) has no memory left for secret pages."""


class PoolExhausted(SecretMemoryExhausted):
    """The pooled-PMD model's CMA area is drained (and fallback is off)."""


class RequestTooLarge(ResourceExhausted):
    """A batch or message beyond the server's configured limits."""


class TooManyCalls(ResourceExhausted):
    """The caller already holds as many long-lived calls (streams, watches) as allowed."""


class QuotaExceeded(ResourceExhausted):
    """The caller's identity already holds as much secret memory as its policy
    quota (``secret_memory``) allows: delete keys or versions it created first."""


class StoreFull(ResourceExhausted):
    """The key store's disk is full: nothing was written."""


# --- FAILED_PRECONDITION ----------------------------------------------------------


class FailedPrecondition(VaultError):
    status = "FAILED_PRECONDITION"


class StoreSealed(FailedPrecondition):
    """The store has not been unsealed: no key can be used yet."""


class KeyringClosed(StoreSealed):
    """The embedded keyring was closed (its memory zeroed), or this process
    is a forked child of the one that opened it: no key can be used here."""


class TooManyVersions(FailedPrecondition):
    """The key already has as many versions as a key may have
    (``max_versions_per_key``): delete old versions before rotating again."""


class WrongPassphrase(FailedPrecondition):
    """The unseal passphrase or key file does not open this store."""


class SecretMemoryUnavailable(FailedPrecondition):
    """memfd_secret(2) is not available: the vault refuses to start."""


class VersionBelowMinimum(FailedPrecondition):
    """The token's key version exists but is below the key's minimum
    decryption version: decrypt, verify and verify_mac refuse it until the
    minimum is lowered.  (Earlier releases answered VersionNotFound, NOT_FOUND.)"""


class StoreInUse(FailedPrecondition):
    """The key store is held by another process in a way this one cannot
    share: a first start or a migration needs it alone, and serving
    processes wait for those to finish (``storelock``)."""


class StoreRefused(FailedPrecondition):
    """The key store refused this vault at start: its server rejected the
    user's authentication, the database does not exist, or its schema is of
    another version.  ``fix`` says what to change."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


class UnsafeSocketPath(FailedPrecondition):
    """A directory on a Unix socket's path could be changed by another user,
    who could then put a socket of their own in its place: refused by the
    server at start and by the client before it connects.  ``fix`` says what
    to do about that directory."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


class ImportKeyUnavailable(FailedPrecondition):
    """The vault's sealed import key could not be opened at start: wrapped
    import is off (every other operation works) until the store is restored."""


# --- DATA_LOSS ---------------------------------------------------------------------


class IntegrityError(VaultError):
    """A sealed record failed authentication: corrupted or tampered."""

    status = "DATA_LOSS"


# --- UNAVAILABLE ---------------------------------------------------------------


class Unavailable(VaultError):
    status = "UNAVAILABLE"


class ShuttingDown(Unavailable):
    """The server is draining and accepts no new calls."""


class StoreBusy(Unavailable):
    """The key store is locked by another process: nothing was written; retry."""


class StoreUnavailable(Unavailable):
    """The key store (a PostgreSQL server) cannot be reached: the change was
    not made, or, when the connection broke during the commit, its outcome is
    unknown until the change feed says.  Keys already loaded keep serving."""


class AuditUnavailable(Unavailable):
    """The audit log cannot be written, and the server fails closed."""


class ConnectionFailed(Unavailable):
    """The client could not reach the vault (no server on that socket or address).

    Raised by the client, never by the server: nothing was sent.
    """


class OutcomeUnknown(Unavailable):
    """The connection failed after a key-changing call was sent.

    Raised by the client, which does not retry such a call blindly: it may or
    may not have been applied.  Read the key back to find out.
    """


# --- DEADLINE_EXCEEDED -----------------------------------------------------------


class DeadlineExceeded(VaultError):
    """The call did not finish within its timeout."""

    status = "DEADLINE_EXCEEDED"


# --- INTERNAL (programming errors, never a client's fault) -------------------


class SlotFreed(VaultError):
    """A slot handle was used after it was freed."""


class BackendError(VaultError):
    """An unexpected failure of a secret-memory system call."""


class StoreError(VaultError):
    """An unexpected failure of the key store."""


class StoreDamaged(IntegrityError, StoreError):
    """The key store's file is damaged: SQLite finds it malformed or not a
    database (a torn disk write, bytes overwritten).  DATA_LOSS, like every
    integrity error: restore the store from a backup."""


def _all_errors() -> dict[str, type[VaultError]]:
    found: dict[str, type[VaultError]] = {}
    stack: list[type[VaultError]] = [VaultError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


#: every error class by name: how the client turns a name back into a class
BY_NAME: dict[str, type[VaultError]] = _all_errors()
