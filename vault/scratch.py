"""HMAC state in secret memory for the keyring's operations: a fixed pool, reserved at start.

An HMAC's state holds the key's inner and outer pads, so it lives in secret
memory like the key.  Allocating it on demand would let an operation on a key
that already exists fail at the memlock limit, once new keys had taken the
last page; so the pool allocates all of its slots when the keyring opens
(counted in memlock from then on) and never grows.  A caller that finds every
slot in use waits for one: an operation in flight holds a slot only for the
length of one HMAC, so the wait is short, and it never fails.

The default, 15 slots of :data:`crypto.HMAC_STATE_BYTES` (208 bytes, the
256-byte size class), fills the page that the row MACs' own HMAC state opens
(16 to a page): the reserve costs no memlock beyond the page the vault always
held, and 15 HMACs compute at once, more than the cores most machines have.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from secretvault.api.errors import StoreSealed
from secretvault.backends import Slot, SlotAllocator
from secretvault.vault import crypto

#: slots reserved for HMAC state: with the row MACs' state, one page of 256-byte slots
HMAC_SCRATCH_SLOTS = 15


class HmacStates:
    """``count`` slots of HMAC state, allocated now; each HMAC borrows one, or waits."""

    def __init__(self, allocator: SlotAllocator, count: int = HMAC_SCRATCH_SLOTS) -> None:
        if count < 1:
            raise ValueError("an HMAC state pool needs at least one slot")
        self._free: list[Slot] = []
        try:
            for _ in range(count):
                self._free.append(allocator.allocate(crypto.HMAC_STATE_BYTES))
        except BaseException:
            self._release_all()
            raise
        self.count = count
        self._ready = threading.Condition(threading.Lock())
        self._waiting = 0
        self._closed = False

    def hmac(self, key: Slot | None, length: int, message: bytes) -> bytes:
        """The HMAC-SHA256 tag of ``message`` under the ``length``-byte key in ``key``."""
        assert key is not None
        # :meth:`borrow`, inline: a generator's context manager would cost
        # more than the rest of a short MAC's bookkeeping
        try:
            state = self._free.pop()  # atomic: the usual case takes no lock
        except IndexError:
            state = self._wait()
        try:
            return crypto.hmac_sha256(key, length, state, message)
        finally:
            self._give_back(state)

    @contextmanager
    def borrow(self) -> Iterator[Slot]:
        """A slot for the body's use (its content is the body's business: the
        HMAC wipes its state when it is done)."""
        try:
            slot = self._free.pop()
        except IndexError:
            slot = self._wait()
        try:
            yield slot
        finally:
            self._give_back(slot)

    def _give_back(self, slot: Slot) -> None:
        self._free.append(slot)
        if self._waiting:
            with self._ready:
                self._ready.notify()

    def _wait(self) -> Slot:
        with self._ready:
            # counted before the second look: a slot given back after it
            # finds the pool empty sees the count, and wakes this caller
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise StoreSealed("the keyring is closed")
                    try:
                        return self._free.pop()
                    except IndexError:
                        self._ready.wait()
            finally:
                self._waiting -= 1

    def close(self) -> None:
        """Zero and free every slot; callers still waiting are refused.  Call it
        when no operation is in flight (the keyring holds its write side)."""
        with self._ready:
            self._closed = True
            self._release_all()
            self._ready.notify_all()

    def _release_all(self) -> None:
        while self._free:
            self._free.pop().free()
