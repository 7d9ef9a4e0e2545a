"""grpc failures back to the error tree: the names, the families, no debug strings."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from secretvault.api.errors import (
    BY_NAME,
    ConnectionFailed,
    DeadlineExceeded,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    MemlockExceeded,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    ResourceExhausted,
    ShuttingDown,
    VaultError,
    WrongKeyType,
)
from secretvault.clients import _errors


class FailedCall(grpc.RpcError):
    """What a failed grpc call raises: an RpcError that is also a grpc.Call."""

    def __init__(self, code: grpc.StatusCode, details: str, name: str | None = None) -> None:
        self._code = code
        self._details = details
        self._trailing = (("secretvault-error", name),) if name else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing

    def __str__(self) -> str:
        # grpc's own str() carries debug_error_string: it must never leak
        return "<_InactiveRpcError debug_error_string = 'grpc-core internals'>"


def test_every_error_class_round_trips_by_name() -> None:
    for name, cls in BY_NAME.items():
        code = grpc.StatusCode[cls.status]
        err = _errors.from_rpc_error(FailedCall(code, f"message of {name}", name))
        assert type(err) is cls, name
        assert str(err) == f"message of {name}"


def test_named_class_with_the_wrong_status_falls_back_to_the_code_family() -> None:
    # a server naming a class this client files under another status
    err = _errors.from_rpc_error(FailedCall(grpc.StatusCode.NOT_FOUND, "gone", "KeyExists"))
    assert type(err) is NotFound


def test_unknown_name_falls_back_to_the_code_family() -> None:
    err = _errors.from_rpc_error(
        FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "bad", "SomeFutureError")
    )
    assert type(err) is InvalidArgument
    assert str(err) == "bad"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, KeyExists),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, PermissionDenied),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.DATA_LOSS, IntegrityError),
        (grpc.StatusCode.UNAVAILABLE, ConnectionFailed),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_unnamed_status_maps_to_its_family(code: grpc.StatusCode, cls: type[VaultError]) -> None:
    err = _errors.from_rpc_error(FailedCall(code, "detail"))
    assert type(err) is cls
    assert err.status == cls.status


def test_internal_and_unknown_codes_are_the_root_with_the_code_named() -> None:
    err = _errors.from_rpc_error(FailedCall(grpc.StatusCode.UNIMPLEMENTED, "no such method"))
    assert type(err) is VaultError
    assert str(err) == "UNIMPLEMENTED: no such method"


def test_the_debug_string_never_leaks() -> None:
    for code in grpc.StatusCode:
        err = _errors.from_rpc_error(FailedCall(code, "the status message"))
        assert "grpc-core internals" not in str(err)
        assert "debug_error_string" not in str(err)


def test_connection_failure_names_the_target() -> None:
    err = _errors.from_rpc_error(
        FailedCall(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"),
        target="unix:/run/x.sock",
    )
    assert isinstance(err, ConnectionFailed)
    assert "unix:/run/x.sock" in str(err)


def test_server_unavailable_with_a_name_is_that_class() -> None:
    err = _errors.from_rpc_error(
        FailedCall(grpc.StatusCode.UNAVAILABLE, "draining", "ShuttingDown"), target="t"
    )
    assert type(err) is ShuttingDown
    assert str(err) == "draining"


def test_batch_operation_errors_map_by_number_and_name() -> None:
    err = _errors.from_code_number(5, "KeyNotFound", "no key named 'x'")
    assert type(err) is KeyNotFound
    err = _errors.from_code_number(3, "WrongKeyType", "sign needs ed25519")
    assert type(err) is WrongKeyType
    err = _errors.from_code_number(8, "", "over")
    assert type(err) is ResourceExhausted
    assert not isinstance(err, MemlockExceeded)


def test_outcome_unknown_keeps_its_cause() -> None:
    cause = ConnectionFailed("socket closed")
    err = _errors.outcome_unknown(cause)
    assert isinstance(err, OutcomeUnknown)
    assert err.__cause__ is cause
    assert "may or may not" in str(err)


def test_a_version_below_the_minimum_is_a_failed_precondition() -> None:
    """The contract since issue 13: the version exists but is retired for
    decrypt and verify, FAILED_PRECONDITION; a server from before still sent
    NOT_FOUND with VersionNotFound, which maps as it did."""
    from secretvault.api.errors import VersionBelowMinimum, VersionNotFound

    err = _errors.from_rpc_error(FailedCall(grpc.StatusCode.FAILED_PRECONDITION,
                                            "below", "VersionBelowMinimum"))
    assert type(err) is VersionBelowMinimum
    assert isinstance(err, FailedPrecondition) and not isinstance(err, NotFound)
    old = _errors.from_rpc_error(FailedCall(grpc.StatusCode.NOT_FOUND, "below",
                                            "VersionNotFound"))
    assert type(old) is VersionNotFound
