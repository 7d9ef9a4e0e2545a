"""The unseal progress: the keyring drives the callback to its total, and
:class:`secretvault.vault.progress.UnsealProgress` draws a bar only on a terminal and
only for many key versions, then gives one summary line."""

from __future__ import annotations

import io
import threading

from rich.console import Console

from secretvault.backends import SlotAllocator
from secretvault.vault.keyring import Keyring
from secretvault.vault.progress import BAR_THRESHOLD, UnsealProgress
from secretvault.vault.sealing import UnsealSource
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import FAST_KDF, PASSPHRASE, open_ring

MANY = 2000


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def _refresh_threads() -> list[threading.Thread]:
    """rich's Live redraws from a thread while a bar is up (told to stop, it
    ends within one refresh interval)."""
    threads = [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]
    for t in threads:
        if getattr(t, "done", threading.Event()).is_set():
            t.join(timeout=5)
    return [t for t in threads if t.is_alive()]


def _fill(allocator: SlotAllocator, store: SQLiteStore, n: int) -> None:
    ring = open_ring(allocator, store)
    for i in range(n):
        ring.create(f"k{i:04d}", "ed25519" if i % 2 else "xchacha20-poly1305")
    ring.close()


def test_unsealing_many_versions_drives_the_callback_to_total_and_draws_the_bar(
    allocator: SlotAllocator, store: SQLiteStore
) -> None:
    _fill(allocator, store, MANY)
    calls: list[tuple[int, int]] = []
    console, out = _console(terminal=True)
    bar = UnsealProgress(console)

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        bar(done, total)

    ring = Keyring.open(allocator, store, UnsealSource(passphrase=PASSPHRASE), kdf=FAST_KDF,
                        progress=progress)
    try:
        assert calls[0] == (0, MANY)
        assert calls[-1] == (MANY, MANY)
        assert [d for d, _ in calls] == list(range(MANY + 1))
        assert {t for _, t in calls} == {MANY}
        assert sum(ring.counts_by_type().values()) == MANY
    finally:
        ring.close()
    # the bar was drawn on the (forced) terminal, reached the total, and went away
    assert bar.drew_bar
    text = out.getvalue()
    assert "unsealing keys into secret memory" in text
    assert f"{MANY}/{MANY}" in text
    assert "\x1b[" in text  # cursor control: the live bar, then its removal
    assert not _refresh_threads()
    assert bar.line().startswith(f"secretvault: unsealed {MANY:,} key versions into secret "
                                 "memory in ")


def test_no_bar_when_stderr_is_not_a_terminal() -> None:
    console, out = _console(terminal=False)
    bar = UnsealProgress(console)
    for done in range(MANY + 1):
        bar(done, MANY)
    assert not bar.drew_bar
    assert out.getvalue() == ""  # a log file gets one line from the caller, no bar
    assert f"unsealed {MANY:,} key versions" in bar.line()


def test_no_bar_for_a_few_versions_even_on_a_terminal() -> None:
    console, out = _console(terminal=True)
    bar = UnsealProgress(console)
    for done in range(BAR_THRESHOLD + 1):
        bar(done, BAR_THRESHOLD)
    assert not bar.drew_bar
    assert out.getvalue() == ""
    assert f"unsealed {BAR_THRESHOLD:,} key versions" in bar.line()


def test_the_line_counts_and_times() -> None:
    ticks = iter([10.0, 12.5])
    bar = UnsealProgress(_console(terminal=False)[0], clock=lambda: next(ticks))
    assert not bar.started
    bar(0, 1)
    bar(1, 1)
    assert bar.started
    assert bar.line() == "secretvault: unsealed 1 key version into secret memory in 2.50 s"


def test_a_failed_unseal_takes_the_bar_down() -> None:
    console, out = _console(terminal=True)
    bar = UnsealProgress(console)
    bar(0, MANY)
    bar(10, MANY)
    assert bar.drew_bar and _refresh_threads()
    bar.close()  # what run() does when opening the vault raises
    assert not _refresh_threads()
    bar.close()  # idempotent
    assert "unsealing keys into secret memory" in out.getvalue()
