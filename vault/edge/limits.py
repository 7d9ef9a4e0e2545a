"""What one caller may hold of the server: batch sizes and long-lived calls.

The batch size is checked here, at the edge, and nowhere else: the edge
sees a batch's size first, before any of its operations is checked or
audited one at a time, and the servicer behind it only runs batches that
passed.  Streams and watches are counted per identity and per listener, and
a watchdog thread cancels the ones that stay idle.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from secretvault.api.errors import RequestTooLarge, TooManyCalls

log = logging.getLogger("secretvault.server")

def check_batch_size(size: int, limit: int) -> None:
    """Refuse a batch of ``size`` operations beyond ``limit`` (RESOURCE_EXHAUSTED)."""
    if size > limit:
        raise RequestTooLarge(f"a batch carries at most {limit} operations; got {size}: "
                              "split it")


class LongCall:
    """A Stream or WatchStats call in progress (see :class:`LongCalls`)."""

    __slots__ = ("context", "identity", "idle", "last", "listener", "timed_out")

    def __init__(self, identity: str, listener: str, context: grpc.ServicerContext,
                 idle: float) -> None:
        self.identity = identity
        self.listener = listener
        self.context = context
        self.idle = idle
        #: perf_counter() of its last sign of life: set by the edge on every
        #: request a stream receives and every update a watch sends
        self.last = time.perf_counter()
        self.timed_out = False


class LongCalls:
    """The streams and watches in progress: bounded, and cancelled when idle.

    grpcio's synchronous server runs each call on a handler thread until it
    ends, and a Stream's handler spends its idle time blocked in the request
    iterator, so each open Stream or WatchStats holds a thread.  Hence:

    * an identity holds at most ``per_identity`` of them, over all listeners;
    * a listener serves at most its ``per_listener`` share (half its threads,
      so its unary calls always find a thread);
    * a call with no sign of life for its idle limit is cancelled.  A
      watchdog thread (running only while such calls are open) calls
      ``context.cancel()``: grpc core cancels the call, the blocked request
      iterator raises in the handler's thread, which unwinds and frees the
      thread; the client sees CANCELLED.
    """

    def __init__(self, per_identity: int, idle_seconds: float) -> None:
        self.per_identity = per_identity
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._calls: set[LongCall] = set()
        self._by_identity: dict[str, int] = {}
        self._by_listener: dict[str, int] = {}
        self._watchdog: threading.Thread | None = None

    def open(self, identity: str, listener: str, per_listener: int,
             context: grpc.ServicerContext, extra_idle: float = 0.0) -> LongCall:
        """Count a new long-lived call, or raise :class:`TooManyCalls`."""
        with self._lock:
            held = self._by_identity.get(identity, 0)
            if held >= self.per_identity:
                raise TooManyCalls(
                    f"identity {identity!r} already holds {held} streams or watches, the most "
                    "the server allows one identity (max_streams_per_identity): end one, or "
                    "send more operations down the streams it has")
            busy = self._by_listener.get(listener, 0)
            if busy >= per_listener:
                raise TooManyCalls(
                    f"{listener} already serves {busy} streams or watches, the most it "
                    "allows (half its handler threads): retry later")
            self._by_identity[identity] = held + 1
            self._by_listener[listener] = busy + 1
            call = LongCall(identity, listener, context, self.idle_seconds + extra_idle)
            self._calls.add(call)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                                  name="secretvault-idle-calls")
                self._watchdog.start()
        # however the call ends (even if its handler never resumes), it is uncounted
        if not context.add_callback(lambda: self.close(call)):
            self.close(call)
        return call

    def close(self, call: LongCall) -> None:
        """Uncount a call (idempotent: the handler and grpc's callback both do)."""
        with self._lock:
            if call not in self._calls:
                return
            self._calls.discard(call)
            for counts, name in ((self._by_identity, call.identity),
                                 (self._by_listener, call.listener)):
                n = counts[name] - 1
                if n:
                    counts[name] = n
                else:
                    del counts[name]

    def held(self, identity: str) -> int:
        with self._lock:
            return self._by_identity.get(identity, 0)

    def _watch(self) -> None:
        tick = min(max(self.idle_seconds / 4, 0.05), 1.0)
        while True:
            time.sleep(tick)
            with self._lock:
                if not self._calls:
                    self._watchdog = None
                    return
                now = time.perf_counter()
                stale = [c for c in self._calls if not c.timed_out and now - c.last > c.idle]
                for c in stale:
                    c.timed_out = True
            for c in stale:
                log.info("cancelling an idle stream of identity %r on %s: nothing for %.0f s",
                         c.identity, c.listener, c.idle)
                c.context.cancel()
