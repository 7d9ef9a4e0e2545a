"""What the kernel promises about the vault's secret memory, checked on its own regions.

Every test allocates through ``SlotAllocator(MemfdSecretBackend())`` (or, for
the fd tests, the same ``secretvault.backends._sys`` calls the backend makes), puts a
random key there, attacks it, and asserts the kernel's refusal with its exact
errno.  Each also has a *control*: the same attack on ordinary memory, which
must succeed, so a test cannot pass because the attack itself is broken.

The pytest process is not hardened (``PR_SET_DUMPABLE`` stays 1): secret
memory must resist the attacks below without help; hardening is tested on
its own, in a subprocess.
"""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import json
import mmap
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secretvault.backends import _sodium, _sys
from secretvault.backends._memfd import MemfdSecretBackend
from secretvault.backends._slots import PAGE_SIZE, Slot, SlotAllocator

pytestmark = pytest.mark.memfd_secret

REPO = Path(__file__).resolve().parents[2]


def run_child(*args: str, timeout: float = 30) -> dict[str, Any]:
    """Run a scenario of tests/security/_child.py; its JSON answer."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.security._child", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"scenario {args[0]} failed:\n{proc.stderr}"
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture
def alloc() -> Iterator[SlotAllocator]:
    a = SlotAllocator(MemfdSecretBackend())
    yield a
    a.close()


@pytest.fixture
def key(alloc: SlotAllocator) -> Slot:
    """A random 64-byte key in a vault slot."""
    slot = alloc.allocate(64)
    _sodium.randombytes_buf(slot.ptr, 64)
    assert not _sodium.sodium_is_zero(slot.ptr, 64)
    return slot


@pytest.fixture
def control() -> ctypes.Array[ctypes.c_char]:
    """Ordinary memory holding a known value: every attack must read it."""
    return ctypes.create_string_buffer(b"public-control-0", 16)


def key_bytes(slot: Slot) -> bytes:
    return bytes(_sodium.ffi.buffer(slot.ptr, 64))


def test_pytest_is_not_hardened() -> None:
    # The attacks below run against a dumpable process on purpose; if this
    # fails, an earlier test hardened the pytest process itself (open the
    # vault with harden=False in-process, harden only in a subprocess).
    assert _sys.is_dumpable(), "the pytest process was hardened by an earlier test"


# --- /proc/PID/mem, process_vm_readv, ptrace ----------------------------------------


def test_proc_self_mem_read_is_eio(key: Slot, control: ctypes.Array[ctypes.c_char]) -> None:
    fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert os.pread(fd, 16, ctypes.addressof(control)) == control.raw
        with pytest.raises(OSError) as e:
            os.pread(fd, 64, key.address)
        assert e.value.errno == errno.EIO
        # one byte, mid-page, page-aligned: always refused
        for addr in (key.address + 7, key.address - key.address % PAGE_SIZE):
            with pytest.raises(OSError) as e:
                os.pread(fd, 1, addr)
            assert e.value.errno == errno.EIO
    finally:
        os.close(fd)


def test_childs_process_vm_readv_is_efault(key: Slot, control: ctypes.Array[ctypes.c_char]) -> None:
    me = str(os.getpid())
    got = run_child("vm_readv", me, str(ctypes.addressof(control)), "16")
    assert got == {"data": control.raw.hex()}
    got = run_child("vm_readv", me, str(key.address), "64")
    assert got == {"errno": errno.EFAULT}


def test_tracers_peekdata_is_eio(key: Slot, control: ctypes.Array[ctypes.c_char]) -> None:
    got = run_child("peek", str(os.getpid()), str(ctypes.addressof(control)), str(key.address))
    if "attach_errno" in got:
        pytest.skip(
            "this machine does not let a child trace its parent "
            f"({os.strerror(int(got['attach_errno']))}: Yama ptrace_scope or no CAP_SYS_PTRACE)"
        )
    (control_word, control_errno), (key_word, key_errno) = got["words"]
    assert control_errno == 0
    assert control_word == int.from_bytes(control.raw[:8], sys.byteorder)
    assert key_errno == errno.EIO
    assert key_word is None


# --- the file descriptor ------------------------------------------------------------------


@pytest.fixture
def secret_fd() -> Iterator[tuple[int, int]]:
    """(fd, address): a memfd_secret file, still open, mapped, holding a random key."""
    fd = _sys.memfd_secret()
    _sys.ftruncate(fd, PAGE_SIZE)
    addr = _sys.mmap_shared(fd, PAGE_SIZE)
    _sodium.randombytes_buf(_sodium.pointer(addr), 64)
    yield fd, addr
    _sys.munmap(addr, PAGE_SIZE)
    os.close(fd)


@pytest.fixture
def ordinary_fd() -> Iterator[int]:
    """Control: an ordinary memfd holding data, readable every way below."""
    fd = os.memfd_create("control", os.MFD_CLOEXEC)
    os.write(fd, b"public-control-0")
    os.lseek(fd, 0, os.SEEK_SET)
    yield fd
    os.close(fd)


def test_read_and_pread_on_the_fd_fail(secret_fd: tuple[int, int], ordinary_fd: int) -> None:
    fd, _ = secret_fd
    assert os.read(ordinary_fd, 16) == b"public-control-0"
    assert os.pread(ordinary_fd, 16, 0) == b"public-control-0"
    with pytest.raises(OSError) as e:
        os.read(fd, 64)
    assert e.value.errno == errno.EINVAL  # secretmem has no read_iter
    with pytest.raises(OSError) as e:
        os.pread(fd, 64, 0)
    assert e.value.errno == errno.ESPIPE  # nor positional reads
    os.lseek(ordinary_fd, 0, os.SEEK_SET)
    with open("/dev/null", "wb") as sink:  # nor can it be spliced out
        assert os.sendfile(sink.fileno(), ordinary_fd, None, 16) == 16
        with pytest.raises(OSError) as e:
            os.sendfile(sink.fileno(), fd, None, 64)
        assert e.value.errno == errno.EINVAL
    # nor reopened through /proc to get a file with other operations
    with os.fdopen(os.open(f"/proc/self/fd/{ordinary_fd}", os.O_RDONLY), "rb") as f:
        assert f.read(16) == b"public-control-0"
    with pytest.raises(OSError) as e:
        os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    assert e.value.errno == errno.ENXIO


def test_map_private_is_refused(secret_fd: tuple[int, int], ordinary_fd: int) -> None:
    fd, _ = secret_fd
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    with mmap.mmap(ordinary_fd, 16, flags=mmap.MAP_PRIVATE, prot=prot) as m:
        assert m[:16] == b"public-control-0"
    with pytest.raises(OSError) as e:
        mmap.mmap(fd, PAGE_SIZE, flags=mmap.MAP_PRIVATE, prot=prot)
    assert e.value.errno == errno.EINVAL
    with mmap.mmap(fd, PAGE_SIZE, flags=mmap.MAP_SHARED, prot=prot) as m:
        assert len(m) == PAGE_SIZE  # shared is how it is meant to be mapped


# --- fork -------------------------------------------------------------------------------------


def read_in_child(address: int, n: int) -> tuple[int, bytes]:
    """Fork; the child copies ``n`` bytes at ``address`` to a pipe.

    Returns (wait status, bytes received).  The child disables faulthandler
    and core dumps first, so a fault is just a SIGSEGV exit.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            faulthandler.disable()
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            data = bytes(_sodium.ffi.buffer(_sodium.pointer(address), n))
            os.write(w, data)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    return status, data


def test_forked_child_faults_on_a_vault_region(key: Slot) -> None:
    status, data = read_in_child(key.address, 64)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    assert data == b""


def test_without_dontfork_a_child_would_read_it(secret_fd: tuple[int, int]) -> None:
    """Control: why the vault MADV_DONTFORKs every region.

    A shared secretmem mapping is inherited by fork; only MADV_DONTFORK keeps
    it out of the child.
    """
    _, addr = secret_fd
    expected = bytes(_sodium.ffi.buffer(_sodium.pointer(addr), 64))
    status, data = read_in_child(addr, 64)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert data == expected


# --- free ------------------------------------------------------------------------------------


def test_freed_slot_reads_back_as_zeros(alloc: SlotAllocator) -> None:
    live = alloc.allocate(64)
    gone = alloc.allocate(64)
    _sodium.randombytes_buf(live.ptr, 64)
    _sodium.randombytes_buf(gone.ptr, 64)
    address = gone.address
    assert address // PAGE_SIZE == live.address // PAGE_SIZE, "same page: still mapped"
    assert not _sodium.sodium_is_zero(_sodium.pointer(address), 64)
    gone.free()
    assert _sodium.sodium_is_zero(_sodium.pointer(address), 64)
    assert not _sodium.sodium_is_zero(live.ptr, 64)


# --- the memlock limit, unprivileged -------------------------------------------------------

FIGURES = re.compile(
    r"RLIMIT_MEMLOCK soft (\d+) bytes .*?, hard (\d+) bytes .*?; "
    r"already locked (\d+) bytes .*?; request (\d+) bytes"
)


@pytest.mark.root
def test_memlock_limit_as_nobody() -> None:
    limit = 256 << 10
    got = run_child("memlock", str(limit))
    assert got["uid"] != 0 and got["cap_ipc_lock"] is False
    baseline = int(got["baseline"])
    pages = (limit - baseline) // PAGE_SIZE
    # every page the limit allows was used, packed 64 keys a page
    assert got["pages_mapped"] == pages
    assert got["slots"] == pages * (PAGE_SIZE // 64)
    assert got["pages_resident"] == pages
    m = FIGURES.search(str(got["message"]))
    assert m is not None, got["message"]
    soft, hard, locked, request = (int(x) for x in m.groups())
    assert (soft, hard) == (limit, limit)
    assert locked == got["vmlck_at_error"] == baseline + pages * PAGE_SIZE
    assert request == PAGE_SIZE  # the last, smallest region tried
    assert "ulimit -l" in str(got["message"]) and "CAP_IPC_LOCK" in str(got["message"])
    assert got["contents_ok"] and got["signs_ok"] and got["reused"]
    assert (got["soft"], got["hard"]) == (limit, limit)
    assert got["headroom_bytes"] == limit - baseline - pages * PAGE_SIZE == 0
    assert got["headroom_keys"] == {
        "ed25519": 0,
        "x25519": 0,
        "xchacha20-poly1305": 0,
        "hmac-sha256": 0,
    }


# --- ENOSYS, for real ---------------------------------------------------------------------------


@pytest.mark.parametrize("errname", ["ENOSYS", "EPERM"])
def test_seccomp_denial_is_reported_as_unavailable(errname: str) -> None:
    got = run_child("seccomp", errname)
    assert got["before"] is True, "memfd_secret worked before the filter"
    assert got["mode"] == "2"
    assert got["raw"] == [-1, getattr(errno, errname)]
    refused = got["refused"]
    assert refused is not None, "MemfdSecretBackend() must refuse without memfd_secret"
    assert errname in str(refused) and "seccomp" in str(refused)
    assert "deploy/seccomp.json" in str(refused)
    assert "older than" not in str(refused)


def test_an_embedded_keyring_refuses_to_start_without_memfd_secret(tmp_path: Path) -> None:
    """secretvault.embedded never falls back to ordinary memory: without
    memfd_secret it says why, and a model runs only when asked for by name."""
    got = run_child("embedded_without_memfd_secret", str(tmp_path / "data"))
    assert got["refused"] is not None, "open_keyring() must refuse without memfd_secret"
    assert "ENOSYS" in str(got["refused"])
    assert got["model_protection"] == "model"


# --- process hardening -------------------------------------------------------------------------


@pytest.mark.root
def test_harden_process() -> None:
    got = run_child("harden")
    assert got["dumpable_before"] == 1 and got["before"] == "ordinary memory"
    assert got["dumpable_after"] == 0
    assert got["core_after"] == [0, 0]
    # a same-uid process without CAP_SYS_PTRACE can no longer read it
    assert got["after"] == errno.EPERM
