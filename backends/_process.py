"""What the process can be made to give up, and who can read it: capabilities and ptrace.

:func:`drop_capabilities` takes capabilities out of every set of the calling
thread (threads started afterwards inherit its sets; capabilities are per
thread, so threads already running keep theirs).  :func:`exposure` reads what
stats and the start-up summary report: the capability sets, Yama's
``ptrace_scope``, the dumpable flag, who may therefore attach a debugger, and
the tracer attached now (``TracerPid``).  The system calls are in ``_sys``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from secretvault.backends import _procfs, _sys

#: capability numbers, <linux/capability.h>
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)
CAP = {name: i for i, name in enumerate(CAP_NAMES)}
YAMA_PTRACE_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"


def _last_cap() -> int:
    text = _procfs.read_text("/proc/sys/kernel/cap_last_cap")
    return int(text) if text and text.strip().isdigit() else len(CAP_NAMES) - 1


def cap_names(mask: int) -> tuple[str, ...]:
    """``cap_ipc_lock``-style names of the bits of ``mask`` (``cap_N`` for unnamed ones)."""
    return tuple(f"cap_{CAP_NAMES[i]}" if i < len(CAP_NAMES) else f"cap_{i}"
                 for i in range(64) if mask >> i & 1)


def drop_capabilities(keep: Iterable[str] = (), *, bounding: Iterable[str] = ()) -> None:
    """Keep only the capabilities named in ``keep`` (``"chown"``...), in this thread.

    The ambient set is emptied, and the bounding set but for ``bounding``
    (dropping from the bounding set needs CAP_SETPCAP: without it the set is
    left as it is, and it grants nothing without an exec).  A root process
    that execs children (``serve --workers``) keeps in ``bounding`` what they
    need: a child exec'd as root gets its bounding set as permitted.  The
    effective, permitted and inheritable sets become ``keep`` (the inheritable
    set: empty).  A process with no capability makes no call.  Raises
    BackendError when the kernel refuses.
    """
    mask = 0
    for name in keep:
        mask |= 1 << CAP[name]
    spare = {CAP[name] for name in bounding}
    effective, permitted, inheritable = _sys.capget()
    hardened = not _sys.is_dumpable()
    if effective & (1 << CAP["setpcap"]):
        for cap in range(_last_cap() + 1):
            if cap not in spare and _sys.capbset_read(cap):
                _sys.capbset_drop(cap)
    if (effective | permitted | inheritable) & ~mask or inheritable:
        _sys.capset(effective & mask, permitted & mask, 0)
    if hardened and _sys.is_dumpable():  # commit_creds() keeps it on a drop: make sure
        _sys.harden_process()


@dataclass(frozen=True, slots=True)
class Exposure:
    """Who can read this process's memory with a debugger, and who is doing so now."""

    #: Yama's kernel.yama.ptrace_scope (0-3), None when Yama is not in the kernel
    yama_ptrace_scope: int | None
    #: PR_GET_DUMPABLE: 0 once hardened (only CAP_SYS_PTRACE may then attach)
    dumpable: bool
    #: whether a process with CAP_SYS_PTRACE (root) may attach: every scope but 3
    root_can_attach: bool
    #: "yes", "ancestors" (Yama scope 1: only the processes that started it) or
    #: "no": whether a process of the server's own user, without CAP_SYS_PTRACE, may
    user_can_attach: str
    #: the pid tracing a thread of the process now; 0 when none
    tracer_pid: int
    #: the capability sets, as names: a capability any thread holds is in
    effective: tuple[str, ...]
    permitted: tuple[str, ...]
    bounding: tuple[str, ...]


def yama_ptrace_scope() -> int | None:
    text = _procfs.read_text(YAMA_PTRACE_SCOPE)
    return int(text) if text and text.strip().isdigit() else None


def _task_statuses(every_thread: bool) -> Iterator[bytes]:
    """/proc/self/status of the leader, or of every thread (one that ended is skipped)."""
    paths = [f"/proc/self/task/{t}/status" for t in os.listdir("/proc/self/task")] \
        if every_thread else ["/proc/self/status"]
    for path in paths:
        try:  # bytes, no decoding: a scan of 200 threads takes about 4 ms
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            yield os.read(fd, 4096)
        finally:
            os.close(fd)


def _field(status: bytes, name: bytes, base: int = 10) -> int:
    at = status.find(b"\n" + name + b":")
    if at < 0:
        return 0
    start = at + len(name) + 2
    return int(status[start:status.index(b"\n", start)].strip(), base)


def tracer_pid(*, every_thread: bool = False) -> int:
    """TracerPid of the leader thread (``/proc/self/status``), or of the first traced
    thread when ``every_thread``; 0 when none is traced."""
    for status in _task_statuses(every_thread):
        pid = _field(status, b"TracerPid")
        if pid:
            return pid
    return 0


def user_can_attach(scope: int | None, dumpable: bool) -> str:
    """Whether a process of the same user without CAP_SYS_PTRACE may attach.

    The kernel refuses it a non-dumpable process; Yama then narrows what is
    left: 1, only an ancestor (or a declared PR_SET_PTRACER); 2, only
    CAP_SYS_PTRACE; 3, nobody.  No Yama (None) is 0: the classic rules.
    """
    if not dumpable or scope in (2, 3):
        return "no"
    return "ancestors" if scope == 1 else "yes"


def exposure() -> Exposure:
    """The report, over every thread: a capability counts when any thread holds it
    (capabilities are per thread), the tracer of any thread is the tracer."""
    scope = yama_ptrace_scope()
    dumpable = _sys.is_dumpable()
    tracer = effective = permitted = bounding = 0
    for status in _task_statuses(True):
        tracer = tracer or _field(status, b"TracerPid")
        effective |= _field(status, b"CapEff", 16)
        permitted |= _field(status, b"CapPrm", 16)
        bounding |= _field(status, b"CapBnd", 16)
    return Exposure(
        yama_ptrace_scope=scope,
        dumpable=dumpable,
        root_can_attach=scope != 3,
        user_can_attach=user_can_attach(scope, dumpable),
        tracer_pid=tracer,
        effective=cap_names(effective),
        permitted=cap_names(permitted),
        bounding=cap_names(bounding),
    )
