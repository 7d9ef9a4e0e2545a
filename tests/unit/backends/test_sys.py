"""secretvault.backends._sys: the syscall layer and the typed errors it raises."""

from __future__ import annotations

import fcntl
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretvault.api.errors import BackendError
from secretvault.backends import _sodium, _sys
from tests.unit.backends._backends import secret_fds, vma

PAGE = _sys.PAGE_SIZE


def vmlck() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmLck in /proc/self/status")


@pytest.fixture
def fd() -> Iterator[int]:
    fd = _sys.memfd_secret()
    yield fd
    os.close(fd)


# --- memfd_secret, ftruncate, mmap ---------------------------------------------------


@pytest.mark.memfd_secret
def test_memfd_secret_fd_is_cloexec_and_secretmem(fd: int) -> None:
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert "secretmem" in os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.memfd_secret
def test_size_is_fixed_by_the_first_ftruncate(fd: int) -> None:
    _sys.ftruncate(fd, 2 * PAGE)
    assert os.fstat(fd).st_size == 2 * PAGE
    for size in (4 * PAGE, PAGE, 2 * PAGE):  # grow, shrink, same: all EINVAL
        with pytest.raises(BackendError, match="ftruncate"):
            _sys.ftruncate(fd, size)
    assert os.fstat(fd).st_size == 2 * PAGE


@pytest.mark.memfd_secret
def test_mmap_shared_charges_memlock_before_any_touch(fd: int) -> None:
    n = 8
    _sys.ftruncate(fd, n * PAGE)
    before = vmlck()
    addr = _sys.mmap_shared(fd, n * PAGE)
    try:
        m = vma(addr)
        assert m["Rss"] == "0 kB", "nothing faulted in yet"
        assert vmlck() - before == n * PAGE
        flags = m["VmFlags"].split()
        assert "sh" in flags and "lo" in flags and "dd" in flags  # shared, locked, no dump
    finally:
        _sys.munmap(addr, n * PAGE)
    assert vmlck() == before


@pytest.mark.memfd_secret
def test_create_secret_region_is_dontfork_zeroed_and_closes_its_fd() -> None:
    fds = secret_fds()
    addr = _sys.create_secret_region(3 * PAGE)
    try:
        m = vma(addr)
        assert m["path"].startswith("/secretmem")
        assert m["Size"] == f"{3 * PAGE // 1024} kB"
        assert "dc" in m["VmFlags"].split(), "MADV_DONTFORK: a child must not inherit it"
        assert secret_fds() == fds, "the fd is closed once mapped"
        buf = _sodium.ffi.buffer(_sodium.pointer(addr), 3 * PAGE)
        assert bytes(buf) == bytes(3 * PAGE)
        buf[PAGE : PAGE + 4] = b"\x01\x02\x03\x04"  # the mapping outlives its fd
        assert bytes(buf[PAGE : PAGE + 4]) == b"\x01\x02\x03\x04"
    finally:
        _sys.munmap(addr, 3 * PAGE)
    assert vma(addr) == {}


def test_mmap_anonymous_locked_flags() -> None:
    addr = _sys.mmap_anonymous_locked(2 * PAGE)
    try:
        flags = vma(addr)["VmFlags"].split()
        assert {"lo", "dd", "dc"} <= set(flags)
        assert "sh" not in flags
    finally:
        _sys.munmap(addr, 2 * PAGE)


def test_mmap_anonymous_faults_page_by_page_without_huge_pages() -> None:
    addr = _sys.mmap_anonymous(4 * PAGE)
    try:
        flags = set(vma(addr)["VmFlags"].split())
        assert "nh" in flags and not {"lo", "sh"} & flags
        assert _sys.mincore(addr, 4 * PAGE) == 0  # nothing until first touch
        _sodium.sodium_memzero(_sodium.pointer(addr + PAGE), 1)
        _sodium.sodium_memzero(_sodium.pointer(addr + 3 * PAGE), 1)
        assert _sys.mincore(addr, 4 * PAGE) == 2
    finally:
        _sys.munmap(addr, 4 * PAGE)


def test_madvise_and_munmap_errors_are_typed() -> None:
    with pytest.raises(BackendError, match="madvise"):
        _sys.madvise(PAGE + 1, PAGE, _sys.MADV_DONTFORK)  # unaligned: EINVAL
    with pytest.raises(BackendError, match="munmap"):
        _sys.munmap(PAGE + 1, PAGE)


# --- memlock figures ----------------------------------------------------------------------


def test_memlock_rlimit_maps_infinity_to_minus_one(monkeypatch: pytest.MonkeyPatch) -> None:
    inf = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256 << 10, inf))
    assert _sys.memlock_rlimit() == (256 << 10, -1)
    monkeypatch.undo()
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    assert _sys.memlock_rlimit() == (-1 if soft == inf else soft, -1 if hard == inf else hard)


def test_vm_locked_bytes_is_vmlck() -> None:
    assert _sys.vm_locked_bytes() == vmlck()


def test_memlock_figures_text() -> None:
    text = str(_sys.MemlockFigures(soft=262144, hard=-1, locked=65536, request=4096))
    assert text == (
        "RLIMIT_MEMLOCK soft 262144 bytes (256 KiB), hard unlimited; "
        "already locked 65536 bytes (64 KiB); request 4096 bytes (4 KiB)"
    )


# --- the ENOSYS explanation -------------------------------------------------------------


def enosys(**kw: object) -> str:
    facts: dict[str, object] = {
        "release": "6.18.0",
        "seccomp_mode": "0",
        "cmdline": "root=/dev/vda ro",
        "secretmem_enable": "Y",
        "gvisor": False,
    }
    facts.update(kw)
    return _sys._enosys_message(**facts)  # type: ignore[arg-type]


def test_enosys_names_seccomp() -> None:
    msg = enosys(seccomp_mode="2")
    assert "seccomp" in msg
    assert "older than" not in msg and "disabled" not in msg


def test_enosys_names_an_old_kernel() -> None:
    msg = enosys(release="5.10.0-28-amd64", secretmem_enable=None)
    assert "5.10.0-28-amd64 is older than 5.14" in msg


def test_enosys_names_secretmem_disabled() -> None:
    # 5.14-6.4: off unless secretmem.enable=1 (parameter unreadable: guess from version)
    assert "secretmem.enable=1" in enosys(release="6.1.0", secretmem_enable=None)
    # any kernel whose parameter reads N
    assert "disabled" in enosys(release="6.8.0", secretmem_enable="N")
    # 6.5+ with the parameter unreadable but switched off on the command line
    msg = enosys(release="6.8.0", secretmem_enable=None, cmdline="ro secretmem.enable=0")
    assert "disabled" in msg
    # 6.5+ and nothing says it is off: not blamed
    assert "disabled" not in enosys(release="6.8.0", secretmem_enable=None)


def test_enosys_names_gvisor_and_falls_back_to_config() -> None:
    assert "gVisor" in enosys(gvisor=True, release="4.4.0")
    assert "CONFIG_SECRETMEM" in enosys()


def test_enosys_refuses_ordinary_memory() -> None:
    assert "will not keep keys in ordinary memory" in enosys(seccomp_mode="2")


# --- hardening (state checks; the subprocess test is in tests/security) ------------------


def test_is_dumpable_reads_prctl() -> None:
    # pytest itself is not hardened: the security tests rely on that too
    assert _sys.is_dumpable()


@pytest.mark.memfd_secret
def test_mincore_counts_first_touched_secret_pages() -> None:
    addr = _sys.create_secret_region(4 * PAGE)
    try:
        assert _sys.mincore(addr, 4 * PAGE) == 0
        for i in (1, 3):
            _sodium.randombytes_buf(_sodium.pointer(addr + i * PAGE), 1)
        assert _sys.mincore(addr, 4 * PAGE) == 2
        assert _sys.mincore(addr + PAGE, PAGE) == 1
    finally:
        _sys.munmap(addr, 4 * PAGE)
    with pytest.raises(BackendError, match="mincore"):
        _sys.mincore(addr, 4 * PAGE)  # unmapped: ENOMEM


def test_a_child_with_a_parent_death_signal_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: what ``serve --workers`` relies on so no worker outlives it."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    child = (
        "import os, signal, time\n"
        "from secretvault.backends import set_parent_death_signal\n"
        "set_parent_death_signal(signal.SIGTERM)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        f"while not __import__('os').path.exists({str(pid_file)!r}): time.sleep(0.01)\n"
        "time.sleep(0.2)\n"
    )
    subprocess.run([sys.executable, "-c", parent], check=True, timeout=30)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # a zombie waiting for init to reap it counts as gone
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the child outlived its parent")
