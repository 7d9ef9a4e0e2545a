"""The keyring's readers-writer lock: shared reads, exclusive writes, writers first."""

from __future__ import annotations

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
