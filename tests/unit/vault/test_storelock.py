"""StoreLock: one process per store, released by close or by death, never by a fork."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from secretvault.api.errors import FailedPrecondition, StoreInUse
from secretvault.vault.storelock import StoreLock


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "keys.sqlite3")


def test_the_holder_is_written_beside_the_store(store: str) -> None:
    lock = StoreLock(store, "the test")
    try:
        path = Path(store + ".lock")
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text() == f"{os.getpid()} the test\n"
        assert lock.held
    finally:
        lock.release()
    assert not lock.held


def test_a_second_holder_is_refused_and_told_who_holds_it(store: str) -> None:
    first = StoreLock(store, "the secretvault server")
    try:
        with pytest.raises(StoreInUse) as e:
            StoreLock(store, "a second opener")
        assert isinstance(e.value, FailedPrecondition)
        assert f"pid {os.getpid()}: the secretvault server" in str(e.value)
        assert store in str(e.value)
        # the refused opener did not overwrite the holder's line
        assert Path(store + ".lock").read_text().startswith(f"{os.getpid()} the secretvault")
    finally:
        first.release()
    first.release()  # idempotent
    StoreLock(store, "after release").release()


def _holder_process(store: str) -> subprocess.Popen[str]:
    code = textwrap.dedent(f"""
        import sys, time
        from secretvault.vault.storelock import StoreLock
        lock = StoreLock({store!r}, "a holder process")
        print("held", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p


def test_another_process_is_named_and_kill_9_lets_go(store: str) -> None:
    p = _holder_process(store)
    try:
        with pytest.raises(StoreInUse, match=rf"pid {p.pid}: a holder process"):
            StoreLock(store, "me")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    StoreLock(store, "me").release()  # the kernel dropped the dead holder's lock


def test_a_forked_child_letting_go_keeps_the_parents_hold(store: str) -> None:
    """The child shares the parent's open file: an unlock there would free the
    parent's store.  release() only closes the child's descriptor."""
    lock = StoreLock(store, "parent")
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            lock.release()
            os._exit(0)
        os.waitpid(pid, 0)
        with pytest.raises(StoreInUse, match="parent"):
            StoreLock(store, "intruder")
    finally:
        lock.release()


def test_a_stranger_line_is_not_trusted(store: str) -> None:
    lock = StoreLock(store, "x")
    try:
        Path(store + ".lock").write_text("garbage without a pid\n")
        with pytest.raises(StoreInUse, match="a process that has not said which"):
            StoreLock(store, "y")
    finally:
        lock.release()


def test_a_symlink_in_place_of_the_lock_is_not_followed(store: str, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    os.symlink(target, store + ".lock")
    with pytest.raises(OSError):
        StoreLock(store, "x")
    assert target.read_text() == "untouched"


def test_shared_holders_hold_together_and_keep_an_exclusive_one_out(store: str) -> None:
    """The workers of one ``serve --workers`` share the store; nobody else gets it."""
    first = StoreLock(store, "worker 0", shared=True)
    second = StoreLock(store, "worker 1", shared=True)
    try:
        assert first.held and second.held and first.shared
        with pytest.raises(StoreInUse, match="serve --workers"):
            StoreLock(store, "a plain server")
        first.release()
        with pytest.raises(StoreInUse):
            StoreLock(store, "a plain server")
    finally:
        first.release()
        second.release()
    exclusive = StoreLock(store, "a plain server")
    try:
        with pytest.raises(StoreInUse):
            StoreLock(store, "worker 0", shared=True)
    finally:
        exclusive.release()
