"""The one table from the vault's errors to gRPC status codes, at the server edge.

Every :class:`~secretvault.api.errors.VaultError` class names its status code in its
``status`` attribute; :data:`STATUS` resolves those names once, at import,
for the whole tree (an unknown name fails here, not in the middle of a call).
The error's class name travels in the trailing metadata
(``secretvault-error: KeyNotFound``) so the client raises the same class.

An exception that is *not* a ``VaultError`` is a bug in the server: the
client gets ``INTERNAL`` with a reference number and nothing else; the
detail (type, message, traceback) goes to the server log under the same
reference.  Client mistakes never reach that path: the servicers and the
request decoders turn every bad input into a ``VaultError`` first.
"""

from __future__ import annotations

import itertools
import logging
from typing import NoReturn

import grpc

from secretvault.api.errors import BY_NAME, ERROR_METADATA_KEY, VaultError

log = logging.getLogger("secretvault.server")


def _status_table() -> dict[type[VaultError], grpc.StatusCode]:
    table: dict[type[VaultError], grpc.StatusCode] = {}
    for cls in BY_NAME.values():
        try:
            table[cls] = grpc.StatusCode[cls.status]
        except KeyError:
            raise RuntimeError(
                f"{cls.__name__}.status = {cls.status!r} is not a gRPC status code name"
            ) from None
    return table


#: every error class -> its gRPC status code (the one table)
STATUS: dict[type[VaultError], grpc.StatusCode] = _status_table()

_references = itertools.count(1)


def status_of(error: VaultError) -> grpc.StatusCode:
    # subclasses defined after import (tests, plugins) fall back to their status name
    code = STATUS.get(type(error))
    return code if code is not None else grpc.StatusCode[error.status]


def code_number(code: grpc.StatusCode) -> int:
    """The google.rpc.Code number of a status (what OperationError.code carries)."""
    number = code.value[0]
    assert isinstance(number, int)
    return number


def describe(exc: BaseException, where: str) -> tuple[grpc.StatusCode, str, str]:
    """(status, error class name, message) for any exception raised serving ``where``.

    Unexpected exceptions are logged here with a reference number; the
    returned message says only that reference.
    """
    if isinstance(exc, VaultError):
        code = status_of(exc)
        if code is not grpc.StatusCode.INTERNAL:
            return code, type(exc).__name__, str(exc)
        # an INTERNAL-status VaultError (BackendError, StoreError, SlotFreed)
        # is the server's failure, not the client's: its detail (paths,
        # errno texts, SQLite messages) stays in the log like any other bug's
    ref = next(_references)
    log.error("internal error #%d in %s", ref, where, exc_info=exc)
    return (
        grpc.StatusCode.INTERNAL,
        type(exc).__name__ if isinstance(exc, VaultError) else "VaultError",
        f"internal error (reference #{ref} in the server log)",
    )


def abort(
    context: grpc.ServicerContext, code: grpc.StatusCode, name: str, message: str
) -> NoReturn:
    """End the call with ``code``, naming the error class for the client."""
    context.set_trailing_metadata(((ERROR_METADATA_KEY, name),))
    context.abort(code, message)
    raise AssertionError("grpc.ServicerContext.abort returned")  # pragma: no cover
