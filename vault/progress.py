"""What ``secretvault serve`` shows while the keyring unseals the store.

:class:`UnsealProgress` is the ``progress`` callback of
:meth:`secretvault.vault.keyring.Keyring.open`.  With many key versions (more than
:data:`BAR_THRESHOLD`) and a terminal on stderr it draws a rich progress bar
there, which goes away when unsealing ends; in every case :meth:`line` is the
one summary line (count and time) printed afterwards.  Piped or logged
stderr never gets a bar's control sequences.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: more key versions than this, on a terminal: a bar (fewer unseal in well
#: under a second: a bar would only flicker)
BAR_THRESHOLD = 1000
#: the bar is redrawn at most this many times over a whole unseal: one call
#: per key version into rich would cost more than the unseal itself
_STEPS = 200


class UnsealProgress:
    """The keyring's progress callback: ``progress(done, total)``."""

    def __init__(self, console: Console | None = None, *, threshold: int = BAR_THRESHOLD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console if console is not None else Console(stderr=True)
        self._threshold = threshold
        self._clock = clock
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._started: float | None = None
        self._ended: float | None = None
        self._shown = 0
        self.done = 0
        self.total = 0
        #: True once a bar was drawn (for tests and the summary)
        self.drew_bar = False

    def __call__(self, done: int, total: int) -> None:
        if self._started is None:
            self._started = self._clock()
            if total > self._threshold and self._console.is_terminal:
                self._start_bar(total)
        self.done, self.total = done, total
        if self._bar is not None and self._task is not None and (
                done >= total or done - self._shown >= max(1, total // _STEPS)):
            self._shown = done
            self._bar.update(self._task, completed=done, total=total)
        if done >= total:
            self._ended = self._clock()
            self.close()

    def _start_bar(self, total: int) -> None:
        self._bar = Progress(
            TextColumn("unsealing keys into secret memory"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._bar.add_task("unseal", total=total)
        self._bar.start()
        self.drew_bar = True

    def close(self) -> None:
        """Take the bar down (also when unsealing failed half-way).  Idempotent."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    @property
    def started(self) -> bool:
        """Whether the keyring began unsealing (False: a new store, or start-up
        failed before)."""
        return self._started is not None

    @property
    def seconds(self) -> float:
        if self._started is None:
            return 0.0
        end = self._ended if self._ended is not None else self._clock()
        return end - self._started

    def line(self) -> str:
        """The one summary line: how many key versions, in how long."""
        noun = "key version" if self.done == 1 else "key versions"
        return (f"secretvault: unsealed {self.done:,} {noun} into secret memory in "
                f"{self.seconds:.2f} s")
