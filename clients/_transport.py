"""The channel under a client: the one part that differs between asyncio and threads.

:class:`AsyncTransport` (``grpc.aio``) and :class:`Transport` (``grpc``) each
open the channel and its stubs, wait for it to connect, sleep between
retries and close it.  ``clients/aio.py`` uses the first;
``scripts/gen-sync-client`` turns that name into the second when it writes
``clients/client.py``, so the two keep the same methods and arguments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from secretvault.clients import _errors, _stubs, _wire
from secretvault.clients._wire import Target

if TYPE_CHECKING:
    from secretvault.clients._options import TlsConfig


class AsyncTransport:
    """A ``grpc.aio`` channel and its stubs; belongs to the event loop that made it."""

    def __init__(
        self,
        target: Target,
        tls: TlsConfig | None,
        *,
        options: Sequence[tuple[str, Any]],
        interceptors: Sequence[Any],
    ) -> None:
        opts = _wire.channel_options(tls, options)
        icpt = list(interceptors) or None
        if tls is None:
            self._channel = grpc.aio.insecure_channel(
                target.grpc_target, options=opts, interceptors=icpt
            )
        else:
            self._channel = grpc.aio.secure_channel(
                target.grpc_target, _wire.make_credentials(tls), options=opts, interceptors=icpt
            )
        self.keys, self.crypto, self.stats = _stubs.async_stubs(self._channel)

    async def ready(self, wait: float, metadata: _stubs.Metadata) -> bool:
        """Whether the channel connects within ``wait`` seconds (sends nothing)."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), wait)
        except TimeoutError:
            return False
        return True

    @staticmethod
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        await self._channel.close()


class Transport:
    """A ``grpc`` channel (wrapped by the interceptors, if any) and its stubs."""

    def __init__(
        self,
        target: Target,
        tls: TlsConfig | None,
        *,
        options: Sequence[tuple[str, Any]],
        interceptors: Sequence[Any],
    ) -> None:
        opts = _wire.channel_options(tls, options)
        if tls is None:
            channel = grpc.insecure_channel(target.grpc_target, options=opts)
        else:
            channel = grpc.secure_channel(
                target.grpc_target, _wire.make_credentials(tls), options=opts
            )
        # closing goes to the channel itself, not to the interceptors' wrapper
        self._channel = channel
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self.keys, self.crypto, self.stats = _stubs.sync_stubs(channel)
        self._health = _stubs.health_check(channel)

    def ready(self, wait: float, metadata: _stubs.Metadata) -> bool:
        """Whether the channel connects within ``wait`` seconds.

        A health check sent with ``wait_for_ready`` stays queued in the
        client until a connection is up (or ``wait`` ends): any answer, even
        an error status, proves one was.  (``grpc.channel_ready_future`` would
        do, but its polling thread can fail noisily when the channel closes
        right after.)
        """
        try:
            self._health(
                health_pb2.HealthCheckRequest(),
                timeout=wait,
                metadata=metadata,
                wait_for_ready=True,
            )
        except grpc.RpcError as e:
            return _errors.status_name(e.code()) not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        return True

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        self._channel.close()
