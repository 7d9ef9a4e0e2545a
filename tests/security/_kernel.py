"""Test-only ctypes access to the kernel interfaces an attacker would use.

Product code keeps ctypes in ``backends/_sys.py``; these calls exist to
attack the vault's memory from the outside (another process, a tracer) and
to take memfd_secret away with a seccomp filter.  Each returns the kernel's
answer (data or errno) rather than raising, so the tests can check the exact
errno.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# --- process_vm_readv -------------------------------------------------------------


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_IOVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IOVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def process_vm_readv(pid: int, address: int, length: int) -> bytes | int:
    """``length`` bytes of ``pid``'s memory at ``address``, or the errno."""
    buf = ctypes.create_string_buffer(length)
    local = _IOVec(ctypes.cast(buf, ctypes.c_void_p), length)
    remote = _IOVec(address, length)
    n = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        return ctypes.get_errno()
    return buf.raw[:n]


# --- ptrace -------------------------------------------------------------------------

PTRACE_PEEKDATA = 2
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
_WALL = 0x40000000

_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> tuple[int, int]:
    """(return value, errno): PEEKDATA's word may itself be -1, so errno is cleared first."""
    ctypes.set_errno(0)
    rc = _libc.ptrace(request, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    return rc, ctypes.get_errno()


def peek_words(pid: int, addresses: list[int]) -> dict[str, object]:
    """Seize ``pid``, stop it, PTRACE_PEEKDATA each address, detach.

    Returns ``{"attach_errno": e}`` if the kernel refuses to let us trace,
    else ``{"words": [[value, errno], ...]}`` in the order asked.  PTRACE_SEIZE
    + PTRACE_INTERRUPT stop the tracee without sending it a signal, so the
    traced process (pytest) resumes exactly where it was.
    """
    rc, err = _ptrace(PTRACE_SEIZE, pid)
    if rc != 0:
        return {"attach_errno": err}
    try:
        rc, err = _ptrace(PTRACE_INTERRUPT, pid)
        if rc != 0:
            return {"attach_errno": err}
        os.waitpid(pid, _WALL)  # until it is in ptrace-stop
        words = []
        for a in addresses:
            value, err = _ptrace(PTRACE_PEEKDATA, pid, a)
            words.append([value & 0xFFFFFFFFFFFFFFFF if err == 0 else None, err])
        return {"words": words}
    finally:
        _ptrace(PTRACE_DETACH, pid)


# --- prctl, seccomp -------------------------------------------------------------------

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# <linux/audit.h>: the arch a seccomp filter must check before trusting nr
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7, "riscv64": 0xC00000F3}
MEMFD_SECRET_NR = 447

_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def prctl(option: int, arg2: int = 0, arg3: int | None = 0) -> int:
    ctypes.set_errno(0)
    rc = _libc.prctl(option, arg2, arg3, 0, 0)
    if rc < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return int(rc)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def deny_syscall(nr: int = MEMFD_SECRET_NR, err: int = errno.ENOSYS) -> None:
    """Install a seccomp filter: syscall ``nr`` fails with ``err``, all else runs.

    The same thing a container runtime's profile does when it does not list
    memfd_secret: recent profiles answer ENOSYS (so callers fall back), older
    Docker profiles EPERM.
    """
    arch = _AUDIT_ARCH[platform.machine()]
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    prog = b"".join(
        [
            _bpf(ld_w_abs, 0, 0, 4),  # seccomp_data.arch
            _bpf(jeq_k, 0, 3, arch),  # another ABI: allow
            _bpf(ld_w_abs, 0, 0, 0),  # seccomp_data.nr
            _bpf(jeq_k, 0, 1, nr),
            _bpf(ret_k, 0, 0, SECCOMP_RET_ERRNO | err),
            _bpf(ret_k, 0, 0, SECCOMP_RET_ALLOW),
        ]
    )
    insns = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(insns, ctypes.c_void_p))
    # no_new_privs lets an unprivileged process install a filter; root needs it too
    # unless it has CAP_SYS_ADMIN, and it is harmless here
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def raw_memfd_secret() -> tuple[int, int]:
    """(fd or -1, errno) of the bare syscall, bypassing secretvault.backends._sys."""
    _libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    fd = _libc.syscall(ctypes.c_long(MEMFD_SECRET_NR), ctypes.c_uint(os.O_CLOEXEC))
    return int(fd), ctypes.get_errno()


def address_of(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)
