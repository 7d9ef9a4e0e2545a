"""The retry rules of VaultClient._call, attempt by attempt.

The calls here are stand-ins that raise what a failed grpc call raises;
tests/integration/test_client.py checks the same rules against a real
server, a vanished server and a connection cut after sending.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from secretvault.api.errors import ConnectionFailed, KeyNotFound, OutcomeUnknown, ShuttingDown
from secretvault.clients import VaultClient
from secretvault.clients._options import RetryPolicy
from tests.unit.clients.test_errors import FailedCall

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.002)


class Script:
    """An RPC that fails with the scripted errors, then answers."""

    def __init__(self, *failures: FailedCall) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self, request: Any, *, timeout: float | None = None,
                 metadata: Any = ()) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "answer"


def unavailable(name: str | None = None) -> FailedCall:
    return FailedCall(grpc.StatusCode.UNAVAILABLE, "socket closed", name)


@pytest.fixture
def client() -> Any:
    c = VaultClient("/nonexistent/vault.sock", retry=FAST)
    yield c
    c.close()


def test_idempotent_calls_retry_unavailable_then_succeed(client: VaultClient) -> None:
    rpc = Script(unavailable(), unavailable())
    assert client._call(rpc, None, idempotent=True) == "answer"
    assert rpc.calls == 3


def test_idempotent_retries_are_bounded(client: VaultClient) -> None:
    rpc = Script(*[unavailable() for _ in range(10)])
    with pytest.raises(ConnectionFailed):
        client._call(rpc, None, idempotent=True)
    assert rpc.calls == FAST.max_attempts


def test_other_codes_are_never_retried(client: VaultClient) -> None:
    rpc = Script(FailedCall(grpc.StatusCode.NOT_FOUND, "no key", "KeyNotFound"))
    with pytest.raises(KeyNotFound):
        client._call(rpc, None, idempotent=True)
    assert rpc.calls == 1


def test_key_changing_call_lost_after_sending_is_not_retried(
    client: VaultClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_ready", lambda wait: True)  # the channel connected
    rpc = Script(unavailable())
    with pytest.raises(OutcomeUnknown) as info:
        client._call(rpc, None, idempotent=False)
    assert rpc.calls == 1
    assert isinstance(info.value.__cause__, ConnectionFailed)


def test_key_changing_call_refused_unprocessed_is_retried(
    client: VaultClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_ready", lambda wait: True)
    rpc = Script(unavailable("ShuttingDown"))
    assert client._call(rpc, None, idempotent=False) == "answer"
    assert rpc.calls == 2
    rpc = Script(*[unavailable("ShuttingDown") for _ in range(10)])
    with pytest.raises(ShuttingDown):
        client._call(rpc, None, idempotent=False)
    assert rpc.calls == FAST.max_attempts


def test_key_changing_call_is_not_sent_before_the_channel_connects(
    client: VaultClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    ready = iter([False, False, True])

    def fake_ready(wait: float) -> bool:
        waits.append(wait)
        return next(ready)

    monkeypatch.setattr(client, "_ready", fake_ready)
    rpc = Script()
    assert client._call(rpc, None, idempotent=False) == "answer"
    assert rpc.calls == 1 and len(waits) == 3
    monkeypatch.setattr(client, "_ready", lambda wait: False)
    rpc = Script()
    with pytest.raises(ConnectionFailed, match="did not connect"):
        client._call(rpc, None, idempotent=False)
    assert rpc.calls == 0
