"""gRPC failures back to the vault's error tree: the one place that does it.

The server names the error class in the trailing metadata
(``secretvault-error: KeyNotFound``) and reports the class's status code; the
client raises that same class with the server's message.  A failure the
server did not name (no connection, a deadline, a proxy in between) is mapped
by its status code to the family's root class.  Only ``details()`` — the
status message — is used: never ``str(e)``, whose debug string carries
grpc-core internals.
"""

from __future__ import annotations

from typing import Any

import grpc

from secretvault.api.errors import (
    BY_NAME,
    ERROR_METADATA_KEY,
    ConnectionFailed,
    DeadlineExceeded,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    KeyExists,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    ResourceExhausted,
    VaultError,
)

#: a status code the server did not explain -> the root of its family
BY_STATUS: dict[str, type[VaultError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": KeyExists,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAUTHENTICATED": PermissionDenied,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "FAILED_PRECONDITION": FailedPrecondition,
    "DATA_LOSS": IntegrityError,
    "UNAVAILABLE": ConnectionFailed,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def error_name(metadata: Any) -> str | None:
    """The class name the server put in ``secretvault-error``, if any."""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == ERROR_METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def status_name(code: Any) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def from_status(code_name: str, name: str | None, message: str, *, target: str = "") -> VaultError:
    """The vault error for a status code name, the server's class name and message.

    The named class is trusted only when its status matches the code: a
    server of another version naming a class this client files elsewhere
    still yields the right family.
    """
    cls = BY_NAME.get(name) if name else None
    if cls is None or cls.status != code_name:
        cls = BY_STATUS.get(code_name, VaultError)
        if cls is ConnectionFailed and target:
            return ConnectionFailed(f"cannot reach the vault at {target}: {message or code_name}")
        if cls is DeadlineExceeded and target:
            return DeadlineExceeded(f"no answer from the vault at {target} in time ({message})")
        if cls is VaultError:
            return VaultError(f"{code_name}: {message}" if message else code_name)
    return cls(message or code_name)


def from_rpc_error(error: grpc.RpcError, *, target: str = "") -> VaultError:
    """Map a failed call (sync or asyncio) to the vault error it stands for."""
    # grpc.RpcError raised by a call is also a grpc.Call (sync) or an
    # AioRpcError (asyncio): both have code(), details(), trailing_metadata().
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    trailing = getattr(error, "trailing_metadata", None)
    code_name = status_name(code()) if callable(code) else "UNKNOWN"
    message = details() if callable(details) else None
    name = error_name(trailing()) if callable(trailing) else None
    return from_status(code_name, name, message or "", target=target)


def from_code_number(number: int, name: str, message: str) -> VaultError:
    """The error of one failed operation inside a batch or stream."""
    code_name = "UNKNOWN"
    for code in grpc.StatusCode:
        if code.value[0] == number:
            code_name = code.name
            break
    return from_status(code_name, name, message)


def outcome_unknown(err: VaultError) -> OutcomeUnknown:
    """A key-changing call lost its connection after it was sent."""
    exc = OutcomeUnknown(
        f"the connection to the vault failed after a key-changing call was sent ({err}); "
        "it may or may not have been applied: read the key back to find out"
    )
    exc.__cause__ = err
    return exc
