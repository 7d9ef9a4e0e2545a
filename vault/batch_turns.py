"""Batches take turns at the crypto, a few operations at a time, in arrival order.

Only ``CryptoServicer.Batch`` takes turns; unary calls and streams never do.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

#: a batch asks whether its call is still alive (its deadline, a cancel) every
#: this many operations, about 0.3 ms of signing; its consecutive signs with one
#: key run together within each such span (``CryptoServicer._run_span``)
CHECK_EVERY = 16

#: a batch hands its turn to a waiting batch after this many operations (a
#: power of two, and a multiple of CHECK_EVERY: it is tested with a mask where
#: the deadline is).  128, not 64: a batch of 100 (the
#: benchmarks' size) then hands over once, at its end, instead of twice; under
#: 32 batches in flight, a py-spy profile of a worker (--gil) had 33% of its
#: GIL-holding samples in the hand-over (``give``: waking the next batch's
#: thread), and the server's context switches per operation fell from 0.42 to
#: 0.38 (benchmarks/bench_workers.py).  A batch still waits at most one turn,
#: about 2.5 ms of signing, of each batch ahead of it
BATCH_TURN_OPERATIONS = 128


class BatchTurns:
    """Batches take turns at the crypto, :data:`BATCH_TURN_OPERATIONS` at a time,
    in the order they asked.

    Why turns: cffi releases the GIL around every libsodium call, so batches
    running side by side hand the GIL over (and wake a thread) at every
    operation; measured on 2 cores, that raised the server's CPU per batched
    sign from about 60 to 90 us and lowered the rate (re-measured with these
    turns, 4 clients of 100-operation batches, client and server in one
    process: 38-47 us of CPU per sign with turns, 42-60 us without, rates
    within the run-to-run noise of a shared machine).  Why short ones, handed
    on in arrival order: a turn held for a whole batch let one caller's
    10,000-operation batch hold every other batch up for its full run (and
    ``threading.Lock`` is not fair, so a waiter could lose again and again).
    Now a batch waits at most one turn of each batch ahead of it, and a
    waiting batch whose call ends (cancelled, past its deadline) leaves the
    queue.  Unary calls and streams never take a turn.
    """

    #: how often a waiting batch looks whether its call is still alive (seconds)
    POLL = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: one closed gate per waiting batch, oldest first; read without the lock
        #: (a stale answer only delays a hand-over by one turn)
        self.waiting: collections.deque[threading.Lock] = collections.deque()
        #: turns nobody holds (one batch at a time runs)
        self._free = 1

    def take(self, is_active: Callable[[], bool]) -> bool:
        """Wait for a turn.  False (and no turn) when the call ended first."""
        with self._lock:
            if self._free:
                self._free -= 1
                return True
            gate = threading.Lock()
            gate.acquire()
            self.waiting.append(gate)
        while not gate.acquire(timeout=self.POLL):
            if is_active():
                continue
            with self._lock:
                try:
                    self.waiting.remove(gate)
                    return False
                except ValueError:
                    pass  # handed to us in the meantime: pass it straight on
            gate.acquire()
            self.give()
            return False
        return True

    def give(self) -> None:
        """End a turn: hand it to the batch that has waited longest, if any."""
        with self._lock:
            if self.waiting:
                # the turn stays held: it passes to that batch without a gap
                self.waiting.popleft().release()
            else:
                self._free += 1
