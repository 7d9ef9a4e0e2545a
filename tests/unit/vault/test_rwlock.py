"""The keyring's readers-writer lock: shared reads, exclusive writes, writers first."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import pytest

from secretvault.vault._rwlock import RWLock

WAIT = 5.0  # seconds a test waits for something that must happen


def _started(target: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def test_readers_share() -> None:
    lock = RWLock()
    inside = threading.Barrier(3, timeout=WAIT)

    def reader() -> None:
        with lock.read():
            inside.wait()  # only passes if all three hold the read side at once

    threads = [_started(reader) for _ in range(2)]
    with lock.read():
        inside.wait()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()


def test_a_writer_waits_for_readers_and_excludes_them() -> None:
    lock = RWLock()
    events: list[str] = []
    lock.acquire_read()
    writing = threading.Event()

    def writer() -> None:
        with lock.write():
            writing.set()
            events.append("write")

    w = _started(writer)
    assert not writing.wait(0.2)  # a reader holds the lock
    lock.release_read()
    assert writing.wait(WAIT)
    w.join(WAIT)
    with lock.read():  # free again
        events.append("read")
    assert events == ["write", "read"]


def test_writers_are_preferred_over_new_readers() -> None:
    lock = RWLock()
    order: list[str] = []
    lock.acquire_read()  # an operation in progress

    def writer() -> None:
        with lock.write():
            order.append("writer")

    def late_reader() -> None:
        with lock.read():
            order.append("reader")

    w = _started(writer)
    deadline = time.monotonic() + WAIT
    while not lock._writers_waiting:  # the writer is queued
        assert time.monotonic() < deadline
        time.sleep(0.001)
    r = _started(late_reader)
    time.sleep(0.1)
    assert order == []  # the late reader waits behind the queued writer
    lock.release_read()
    w.join(WAIT)
    r.join(WAIT)
    assert order == ["writer", "reader"]


def test_an_interrupted_writer_lets_waiting_readers_go() -> None:
    lock = RWLock()
    lock.acquire_read()
    blocked = threading.Event()
    original_wait = lock._cond.wait

    def interrupted_wait(timeout: float | None = None) -> bool:
        blocked.set()
        raise KeyboardInterrupt

    lock._cond.wait = interrupted_wait  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        lock.acquire_write()
    lock._cond.wait = original_wait  # type: ignore[method-assign]
    assert blocked.is_set() and lock._writers_waiting == 0
    got = threading.Event()

    def reader() -> None:
        with lock.read():
            got.set()

    _started(reader)
    assert got.wait(WAIT)
    lock.release_read()
    with lock.write():
        pass


def test_the_read_side_is_released_when_the_body_raises() -> None:
    lock = RWLock()
    with pytest.raises(ValueError), lock.read():
        raise ValueError("inside")
    with lock.write():  # would block forever if the read side leaked
        pass


def test_no_reader_is_ever_inside_with_a_writer_under_constant_switching() -> None:
    """The read side takes no lock while no writer is about: hammer it with
    readers and writers, switching threads as often as the interpreter can,
    and check from inside that a writer is alone and readers never see one."""
    import sys

    lock = RWLock()
    state = {"writer": 0}
    inside = [False] * 4  # each reader's own flag: set only between acquire and release
    faults: list[str] = []
    stop = time.monotonic() + 1.0

    def reader(i: int) -> None:
        while time.monotonic() < stop:
            with lock.read():
                inside[i] = True
                if state["writer"]:
                    faults.append("a reader inside with a writer")
                inside[i] = False

    def writer() -> None:
        while time.monotonic() < stop:
            with lock.write():
                state["writer"] += 1
                if state["writer"] != 1:
                    faults.append("two writers inside")
                if any(inside):
                    faults.append("a writer inside with readers")
                state["writer"] -= 1
            time.sleep(0)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [_started(functools.partial(reader, i)) for i in range(4)]
        threads += [_started(writer) for _ in range(2)]
        for t in threads:
            t.join(WAIT + 2)
            assert not t.is_alive(), "deadlock"
    finally:
        sys.setswitchinterval(old)
    assert faults == []
    assert lock._readers == [] and lock._gate == 0


def test_a_writer_that_slips_in_between_a_readers_two_looks_goes_first() -> None:
    """The one interleaving the lock-free read side must get right, forced:
    a writer raises the gate after the reader looked at it and before the
    reader is on the list, so the writer sees no reader and goes in.  The
    reader must see the gate on its second look, back out and wait."""
    lock = RWLock()
    writer_inside, let_writer_go, reader_inside = (threading.Event() for _ in range(3))
    seen: list[str] = []

    def writer() -> None:
        with lock.write():
            writer_inside.set()
            let_writer_go.wait(WAIT)
            seen.append("writer leaves")

    class Racing(list[None]):
        first = True

        def append(self, item: None) -> None:
            if self.first:  # between the reader's first look and its append
                self.first = False
                _started(writer)
                assert writer_inside.wait(WAIT)
            super().append(item)

    lock._readers = Racing()

    def reader() -> None:
        with lock.read():
            seen.append("reader enters")
            reader_inside.set()

    r = _started(reader)
    assert writer_inside.wait(WAIT)
    assert not reader_inside.wait(0.3), "the reader went in beside the writer"
    let_writer_go.set()
    assert reader_inside.wait(WAIT)
    r.join(WAIT)
    assert seen == ["writer leaves", "reader enters"]
    assert lock._readers == [] and lock._gate == 0
