"""Server streams in both clients: records out, errors mapped, the call cancelled.

The stream here is a stand-in for a grpc streaming call (sync or asyncio)
that sends some messages and then fails or ends; the client reads it through
the one ``_streaming`` guard both clients share.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from secretvault.api._proto.secretvault.v1 import stats_pb2
from secretvault.api.errors import ConnectionFailed
from secretvault.clients import AsyncVaultClient, Stats, VaultClient
from tests.unit.clients.test_errors import FailedCall


class Stream:
    """Sends ``count`` Stats messages, then raises ``failure`` (if any)."""

    def __init__(self, count: int, failure: Exception | None = None) -> None:
        self.messages = [stats_pb2.Stats(backend="page-model", regions=i) for i in range(count)]
        self.failure = failure
        self.cancelled = False

    def __iter__(self) -> Iterator[stats_pb2.Stats]:
        yield from self.messages
        if self.failure is not None:
            raise self.failure

    async def _aiter(self) -> AsyncIterator[stats_pb2.Stats]:
        for m in self.messages:
            yield m
        if self.failure is not None:
            raise self.failure

    def __aiter__(self) -> AsyncIterator[stats_pb2.Stats]:
        return self._aiter()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class StatsStub:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def WatchStats(self, request: Any, *, metadata: Any = ()) -> Stream:
        return self.stream


def lost() -> FailedCall:
    return FailedCall(grpc.StatusCode.UNAVAILABLE, "socket closed")


def sync_client(stream: Stream) -> VaultClient:
    c = VaultClient("/nonexistent/vault.sock")
    c._stats = StatsStub(stream)  # type: ignore[assignment]
    return c


def test_sync_stream_yields_records_then_the_mapped_error() -> None:
    stream = Stream(2, lost())
    with sync_client(stream) as c:
        updates = c.watch_stats()
        got = [next(updates), next(updates)]
        assert [type(s) for s in got] == [Stats, Stats] and got[1].regions == 1
        with pytest.raises(ConnectionFailed, match=r"/nonexistent/vault\.sock") as info:
            next(updates)
    assert info.value.__suppress_context__  # grpc's error (and its debug string) stays out
    assert stream.cancelled


def test_sync_stream_closed_early_cancels_the_call() -> None:
    stream = Stream(5)
    with sync_client(stream) as c:
        updates = c.watch_stats()
        next(updates)
        assert not stream.cancelled
        updates.close()
    assert stream.cancelled


def test_async_stream_yields_records_then_the_mapped_error() -> None:
    stream = Stream(2, lost())

    async def main() -> list[Stats]:
        async with AsyncVaultClient("/nonexistent/vault.sock") as c:
            c._stats = StatsStub(stream)  # type: ignore[assignment]
            got = []
            with pytest.raises(ConnectionFailed) as info:
                async for s in c.watch_stats():
                    got.append(s)
            assert info.value.__suppress_context__
            return got

    got = asyncio.run(main())
    assert [s.regions for s in got] == [0, 1] and all(isinstance(s, Stats) for s in got)
    assert stream.cancelled


def test_async_stream_closed_early_cancels_the_call() -> None:
    stream = Stream(5)

    async def main() -> None:
        async with AsyncVaultClient("/nonexistent/vault.sock") as c:
            c._stats = StatsStub(stream)  # type: ignore[assignment]
            updates = c.watch_stats()
            await anext(updates)
            assert not stream.cancelled
            await updates.aclose()

    asyncio.run(main())
    assert stream.cancelled
