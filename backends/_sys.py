"""The one module that knows syscall numbers, ``ctypes`` and ``mmap`` flags.

Everything here is a thin function named after the system call it makes.
Each call site checks the return value and turns ``errno`` into a typed
:class:`~secretvault.api.errors.VaultError`, so nothing above this module ever sees a
bare ``OSError`` from a secret-memory syscall.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
from dataclasses import dataclass

from secretvault.api.errors import (
    BackendError,
    MemlockExceeded,
    SecretMemoryExhausted,
    SecretMemoryUnavailable,
)
from secretvault.backends import _procfs

PAGE_SIZE = _procfs.PAGE_SIZE

# memfd_secret(2) has no libc wrapper (and Python's os module has none):
# call it by number.  Same number on x86_64 and arm64; riscv64 uses the
# generic table too.
_MEMFD_SECRET_NR = {"x86_64": 447, "aarch64": 447, "arm64": 447, "riscv64": 447}

# <asm-generic/mman-common.h>, <linux/mman.h>
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MADV_DONTFORK = 10
MADV_DONTDUMP = 16
MADV_NOHUGEPAGE = 15
_MAP_FAILED = ctypes.c_void_p(-1).value
O_CLOEXEC = os.O_CLOEXEC

# <linux/prctl.h>
PR_SET_DUMPABLE = 4
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_LOWER = 3
# <linux/capability.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


def _errno() -> int:
    return ctypes.get_errno()


# --- memlock figures, for the messages of MemlockExceeded ------------------------


@dataclass(frozen=True, slots=True)
class MemlockFigures:
    soft: int  # bytes; -1 for unlimited
    hard: int
    locked: int  # VmLck of this process, bytes
    request: int

    def __str__(self) -> str:
        def fmt(n: int) -> str:
            return "unlimited" if n < 0 else f"{n} bytes ({n // 1024} KiB)"

        return (
            f"RLIMIT_MEMLOCK soft {fmt(self.soft)}, hard {fmt(self.hard)}; "
            f"already locked {fmt(self.locked)}; request {fmt(self.request)}"
        )


def memlock_rlimit() -> tuple[int, int]:
    """RLIMIT_MEMLOCK (soft, hard) in bytes, -1 meaning unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    inf = resource.RLIM_INFINITY
    return (-1 if soft == inf else soft, -1 if hard == inf else hard)


def vm_locked_bytes() -> int:
    """``VmLck`` of this process, from /proc/self/status."""
    return _procfs.status_field("VmLck") or 0


def _memlock_error(length: int, what: str) -> MemlockExceeded:
    soft, hard = memlock_rlimit()
    figures = MemlockFigures(soft, hard, vm_locked_bytes(), length)
    return MemlockExceeded(
        f"{what}: the memlock limit is reached ({figures}). Raise the limit "
        "(ulimit -l, LimitMEMLOCK= in systemd, --ulimit memlock= in a container) "
        "or grant CAP_IPC_LOCK."
    )


# --- memfd_secret -------------------------------------------------------------


def _explain_enosys() -> str:
    """Name the likely reason memfd_secret(2) returned ENOSYS."""
    version = (_procfs.read_text("/proc/version") or "").lower()
    return _enosys_message(
        release=platform.release(),
        seccomp_mode=_procfs.seccomp_mode(),
        cmdline=_procfs.read_text("/proc/cmdline") or "",
        # secretmem is built in; its boolean parameter is readable by root only
        secretmem_enable=(
            _procfs.read_text("/sys/module/secretmem/parameters/enable") or ""
        ).strip() or None,
        gvisor="gvisor" in version or os.path.exists("/proc/gvisor"),
    )


def _enosys_message(
    *, release: str, seccomp_mode: str, cmdline: str, secretmem_enable: str | None, gvisor: bool
) -> str:
    """The ENOSYS explanation from the facts gathered by :func:`_explain_enosys`.

    ``seccomp_mode`` is the ``Seccomp:`` field of /proc/self/status (2: a
    filter is installed); ``secretmem_enable`` is the ``Y``/``N`` of
    /sys/module/secretmem/parameters/enable, or None where unreadable.
    """
    reasons: list[str] = []
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if gvisor:
        reasons.append("this looks like gVisor, which does not implement memfd_secret")
    if (major, minor) < (5, 14):
        reasons.append(f"kernel {release} is older than 5.14, which added memfd_secret")
    elif secretmem_enable in ("N", "0") or (
        secretmem_enable is None
        and (
            any(a in cmdline.split() for a in ("secretmem.enable=0", "secretmem.enable=n"))
            or (major, minor) < (6, 5)
        )
    ):
        reasons.append(
            f"secret memory is disabled on kernel {release}: boot with "
            "secretmem.enable=1 (off by default before 6.5)"
        )
    if seccomp_mode == "2":
        reasons.append(
            "a seccomp filter is active: the container's profile may deny memfd_secret "
            "(run with deploy/seccomp.json, which allows it)"
        )
    if not reasons:
        reasons.append("the architecture or kernel configuration lacks CONFIG_SECRETMEM")
    return (
        "memfd_secret(2) is not available (ENOSYS): "
        + "; ".join(reasons)
        + ". The vault will not keep keys in ordinary memory; for development "
        "only, --backend page-model runs on a model without secret memory."
    )


def _explain_denied(err: int) -> str:
    """Name who refused memfd_secret(2) with EPERM/EACCES."""
    who = (
        "a seccomp filter is active: the container's profile denies memfd_secret "
        "(run with deploy/seccomp.json, which allows it)"
        if _procfs.seccomp_mode() == "2"
        else "a security module (SELinux, AppArmor) denies it to this process"
    )
    return (
        f"memfd_secret(2) was refused ({errno.errorcode[err]}): {who}. The vault will "
        "not keep keys in ordinary memory; for development only, --backend page-model "
        "runs on a model without secret memory."
    )


def memfd_secret() -> int:
    """memfd_secret(O_CLOEXEC) -> fd.  ``O_CLOEXEC`` is the only flag allowed."""
    nr = _MEMFD_SECRET_NR.get(platform.machine())
    if nr is None:
        raise SecretMemoryUnavailable(
            f"memfd_secret(2) is not known on architecture {platform.machine()}"
        )
    fd = _libc.syscall(ctypes.c_long(nr), ctypes.c_uint(O_CLOEXEC))
    if fd < 0:
        err = _errno()
        if err == errno.ENOSYS:
            raise SecretMemoryUnavailable(_explain_enosys())
        if err in (errno.EPERM, errno.EACCES):
            # mm/secretmem.c never returns EPERM or EACCES itself: a seccomp
            # profile whose default action is EPERM (older Docker profiles),
            # or a security module, refused the call.
            raise SecretMemoryUnavailable(_explain_denied(err))
        if err in (errno.EMFILE, errno.ENFILE):
            raise BackendError(f"memfd_secret: out of file descriptors ({os.strerror(err)})")
        if err == errno.ENOMEM:
            raise SecretMemoryExhausted("memfd_secret: the kernel is out of memory")
        raise BackendError(f"memfd_secret failed: {os.strerror(err)} (errno {err})")
    return int(fd)


def ftruncate(fd: int, length: int) -> None:
    # secretmem sets i_size exactly once: a second ftruncate (grow, shrink or
    # same size) is EINVAL, so each region's size is fixed at creation.
    try:
        os.ftruncate(fd, length)
    except OSError as e:
        raise BackendError(f"ftruncate of a secret memory file failed: {e.strerror}") from None


def mmap_shared(fd: int, length: int) -> int:
    """mmap(MAP_SHARED) the secret file read-write; returns the address.

    secretmem refuses MAP_PRIVATE (EINVAL) and PROT_EXEC (EPERM).  The VMA is
    VM_LOCKED|VM_DONTDUMP and the whole length is charged to RLIMIT_MEMLOCK
    here, before any page is touched: EAGAIN means that limit.
    """
    addr = _libc.mmap(None, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if addr in (None, _MAP_FAILED):
        err = _errno()
        if err == errno.EAGAIN:
            raise _memlock_error(length, "mmap of secret memory refused")
        if err == errno.ENOMEM:
            raise SecretMemoryExhausted(
                f"mmap of {length} bytes of secret memory failed: out of memory "
                "or address space (vm.max_map_count)"
            )
        raise BackendError(f"mmap of secret memory failed: {os.strerror(err)} (errno {err})")
    return int(addr)


def mmap_anonymous_locked(length: int) -> int:
    """Private anonymous memory, mlocked, for the model backends.

    Not secret memory: it stays in the direct map and root can read it.  It is
    locked (never swapped), excluded from core dumps and from forked children,
    which is the best ordinary memory can do.
    """
    addr = _libc.mmap(
        None, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0
    )
    if addr in (None, _MAP_FAILED):
        err = _errno()
        raise SecretMemoryExhausted(f"mmap of {length} anonymous bytes failed: {os.strerror(err)}")
    try:
        if _libc.mlock(ctypes.c_void_p(addr), length) != 0:
            err = _errno()
            if err in (errno.EAGAIN, errno.ENOMEM, errno.EPERM):
                raise _memlock_error(length, "mlock of model memory refused")
            raise BackendError(f"mlock failed: {os.strerror(err)}")
        madvise(addr, length, MADV_DONTDUMP)
        madvise(addr, length, MADV_DONTFORK)
    except BaseException:
        munmap(addr, length)
        raise
    return int(addr)


def mmap_anonymous(length: int) -> int:
    """Private anonymous memory, not locked, without transparent huge pages.

    Ordinary process memory as a benchmark's peer: each first touch faults
    one 4 KiB page in (MADV_NOHUGEPAGE), which never leaves the direct map.
    """
    addr = _libc.mmap(None, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr in (None, _MAP_FAILED):
        err = _errno()
        raise BackendError(f"mmap of {length} anonymous bytes failed: {os.strerror(err)}")
    try:
        madvise(addr, length, MADV_NOHUGEPAGE)
    except BaseException:
        munmap(addr, length)
        raise
    return int(addr)


def madvise(addr: int, length: int, advice: int) -> None:
    if _libc.madvise(ctypes.c_void_p(addr), length, advice) != 0:
        err = _errno()
        raise BackendError(f"madvise({advice}) failed: {os.strerror(err)}")


def mincore(addr: int, length: int) -> int:
    """How many pages of [addr, addr + length) are resident, by mincore(2).

    Unlike /proc/self/pagemap this needs no permission: pagemap is mode 0400
    and, once the process is not dumpable (harden_process, or any setuid),
    owned by root, so a hardened unprivileged vault cannot open it.  For a
    secretmem mapping a page is resident once its first touch faulted it in.
    """
    pages = -(-length // PAGE_SIZE)
    vec = (ctypes.c_ubyte * pages)()
    if _libc.mincore(ctypes.c_void_p(addr), length, vec) != 0:
        err = _errno()
        raise BackendError(f"mincore failed: {os.strerror(err)}")
    return sum(b & 1 for b in vec)


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(ctypes.c_void_p(addr), length) != 0:
        err = _errno()
        raise BackendError(f"munmap failed: {os.strerror(err)}")


def create_secret_region(length: int) -> int:
    """A fresh memfd_secret mapping of ``length`` bytes; returns its address.

    The file's size is set once, it is mapped shared, MADV_DONTFORK'd (a
    forked child inherits a shared mapping and *can* read it otherwise;
    MADV_WIPEONFORK is EINVAL on secretmem), and the fd is closed: the
    mapping keeps the file alive, and the pages are zeroed and returned to
    the direct map when it is unmapped.
    """
    fd = memfd_secret()
    try:
        ftruncate(fd, length)
        addr = mmap_shared(fd, length)
    finally:
        os.close(fd)
    try:
        madvise(addr, length, MADV_DONTFORK)
    except BaseException:
        munmap(addr, length)
        raise
    return addr


# --- process hardening --------------------------------------------------------


def harden_process() -> None:
    """No core dumps, and not dumpable (no ptrace attach by the same user).

    Secret memory is already absent from core dumps and unreadable through
    /proc/PID/mem; this covers every other page (messages, public keys,
    the interpreter's heap).
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = _errno()
        raise BackendError(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(err)}")


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked this process exits,
    not only its whole process: a parent must start children from a thread
    that lives as long as it does (``serve --workers`` starts every worker
    from its main thread).  It is kept across execve (but for set-uid
    programs) and cleared in this process's own children.
    """
    if _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        err = _errno()
        raise BackendError(f"prctl(PR_SET_PDEATHSIG, {signum}) failed: {os.strerror(err)}")


def is_dumpable() -> bool:
    PR_GET_DUMPABLE = 3
    return bool(_libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


# --- capabilities ---------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread, as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise BackendError(f"capget failed: {os.strerror(_errno())}")
    return tuple(
        getattr(data[0], f) | getattr(data[1], f) << 32
        for f in ("effective", "permitted", "inheritable"))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) on the calling thread (the kernel changes no other thread)."""
    data = (_CapData * 2)()
    for f, mask in (("effective", effective), ("permitted", permitted),
                    ("inheritable", inheritable)):
        setattr(data[0], f, mask & 0xFFFFFFFF)
        setattr(data[1], f, mask >> 32)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = _errno()
        raise BackendError(f"capset failed: {os.strerror(err)} (errno {err})")


def capbset_read(cap: int) -> bool:
    return bool(_libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1)


def capbset_drop(cap: int) -> None:
    """Take ``cap`` out of the bounding set (needs CAP_SETPCAP) and the ambient set."""
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, cap, 0, 0)
    if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
        err = _errno()
        raise BackendError(f"prctl(PR_CAPBSET_DROP, {cap}) failed: {os.strerror(err)}")
