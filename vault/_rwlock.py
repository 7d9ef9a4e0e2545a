"""A readers-writer lock: many operations at once, mutations alone.

libsodium calls through cffi release the GIL, so a sign in one thread could
otherwise read a slot that a delete in another thread is zeroing.  Every
operation holds the read side while it uses a slot; freeing a slot takes
the write side.  Writers are preferred, so a steady stream of operations
cannot starve a delete.

The read side is on every operation's path, so it is kept to one plain
``Lock`` acquire/release each way and a counter: a reader only waits on the
condition variable when a writer holds or wants the lock, and the last
reader out only notifies when a writer is waiting.  ``with lock.read():``
enters the lock itself, whose ``__enter__`` and ``__exit__`` *are* the
acquire and release (no call through a wrapper), so the statement costs
what calling them by hand does.  Writes (key creation, rotation, deletion)
are rare and take the slower path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class _Side:
    """``with lock.write():`` without a generator per use."""

    __slots__ = ("_enter", "_exit")

    def __init__(self, enter: Callable[[], None], exit_: Callable[[], None]) -> None:
        self._enter = enter
        self._exit = exit_

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._exit()


class RWLock:
    __slots__ = (
        "_cond",
        "_lock",
        "_readers",
        "_write",
        "_writer",
        "_writers_waiting",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # waited on only when a reader meets a writer (or a writer meets anyone)
        self._cond = threading.Condition(self._lock)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._write = _Side(self.acquire_write, self.release_write)

    # --- the read side: every operation --------------------------------------------

    def acquire_read(self) -> None:
        with self._lock:
            if self._writer or self._writers_waiting:
                while self._writer or self._writers_waiting:
                    self._cond.wait()
            self._readers += 1

    def release_read(self, exc_type: type[BaseException] | None = None,
                     exc: BaseException | None = None, tb: TracebackType | None = None) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0 and self._writers_waiting:
                self._cond.notify_all()

    __enter__ = acquire_read
    __exit__ = release_read

    def read(self) -> RWLock:
        """A context manager holding the read side: the lock itself."""
        return self

    # --- the write side: mutations ---------------------------------------------------

    def acquire_write(self) -> None:
        with self._lock:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            except BaseException:
                # interrupted: readers held back for this writer must not wait on
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._lock:
            self._writer = False
            # readers held back for this writer, and other writers, may go on
            self._cond.notify_all()

    def write(self) -> _Side:
        """A context manager holding the write side (the same object every time)."""
        return self._write
