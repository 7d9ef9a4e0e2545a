"""Scenarios the security tests run in a separate process.

``python -m tests.security._child SCENARIO ARGS...`` prints one JSON object
on its last line of stdout.  Some scenarios *attack* the test process (read
its memory, trace it); others change something that cannot be undone in
the test process (drop to nobody, install a seccomp filter, harden).
"""

from __future__ import annotations

import ctypes
import encodings.ascii
import encodings.utf_8
import errno
import json
import os
import pwd
import re
import resource
import sys
from collections.abc import Callable

from secretvault.api.errors import MemlockExceeded, SecretMemoryUnavailable
from secretvault.backends import _sodium, _sys
from secretvault.backends._memfd import MemfdSecretBackend
from secretvault.backends._slots import Slot, SlotAllocator
from tests.security import _kernel

# Import everything a scenario touches *before* dropping privileges: nobody
# cannot read the interpreter's own library under /root (codecs included).
_ = (re, json, ctypes, encodings.ascii, encodings.utf_8)


def vm_readv(pid: str, address: str, length: str) -> dict[str, object]:
    got = _kernel.process_vm_readv(int(pid), int(address), int(length))
    return {"errno": got} if isinstance(got, int) else {"data": got.hex()}


def peek(pid: str, *addresses: str) -> dict[str, object]:
    return _kernel.peek_words(int(pid), [int(a) for a in addresses])


def drop_to_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)  # all capabilities go with uid 0 (no keepcaps)


def memlock(limit: str) -> dict[str, object]:
    """As nobody with RLIMIT_MEMLOCK = ``limit``, allocate 64-byte slots until refused."""
    soft = hard = int(limit)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
    drop_to_nobody()
    baseline = _sys.vm_locked_bytes()
    alloc = SlotAllocator(MemfdSecretBackend())
    slots: list[Slot] = []
    written: list[bytes] = []
    pk = _sodium.ffi.new("unsigned char[32]")
    pks: list[bytes] = []
    seed = _sodium.ffi.new("unsigned char[32]")  # test keys: ordinary memory is fine
    message = ""
    vmlck_at_error = -1
    try:
        while True:
            slot = alloc.allocate(64)
            _sodium.randombytes_buf(seed, 32)
            _sodium.crypto_sign_seed_keypair(pk, slot.ptr, seed)
            slots.append(slot)
            pks.append(bytes(pk))
            written.append(bytes(_sodium.ffi.buffer(slot.ptr, 64)))
            if len(slots) > 1 << 20:
                return {"error": "never refused: RLIMIT_MEMLOCK is not enforced"}
    except MemlockExceeded as e:
        message = str(e)
        vmlck_at_error = _sys.vm_locked_bytes()
    stats = alloc.statistics()
    # the earlier keys are intact and still sign
    contents_ok = all(
        bytes(_sodium.ffi.buffer(s.ptr, 64)) == w for s, w in zip(slots, written, strict=True)
    )
    signs_ok = all(
        _sodium.crypto_sign_verify_detached(
            _sodium.crypto_sign_detached(slots[i].ptr, b"still here"), b"still here", pks[i]
        )
        for i in (0, len(slots) // 2, len(slots) - 1)
    )
    # a freed slot is reusable at the limit
    addr = slots[0].address
    slots[0].free()
    reused = alloc.allocate(64).address == addr
    return {
        "uid": os.getuid(),
        "cap_ipc_lock": stats.memlock.cap_ipc_lock,
        "baseline": baseline,
        "slots": len(slots),
        "message": message,
        "vmlck_at_error": vmlck_at_error,
        "pages_mapped": stats.pages_mapped,
        "pages_resident": stats.pages_resident,
        "soft": stats.memlock.soft,
        "hard": stats.memlock.hard,
        "headroom_bytes": stats.memlock.headroom_bytes,
        "headroom_keys": dict(stats.memlock.headroom_keys),
        "contents_ok": contents_ok,
        "signs_ok": signs_ok,
        "reused": reused,
    }


def seccomp(errname: str) -> dict[str, object]:
    """memfd_secret denied by a real seccomp filter answering ``errname``."""
    fd, err = _kernel.raw_memfd_secret()
    before = fd >= 0
    if before:
        os.close(fd)
    _kernel.deny_syscall(err=getattr(errno, errname))
    with open("/proc/self/status", encoding="ascii") as f:
        mode = next(ln.split()[1] for ln in f if ln.startswith("Seccomp:"))
    fd, err = _kernel.raw_memfd_secret()
    try:
        MemfdSecretBackend()
    except SecretMemoryUnavailable as e:
        return {"before": before, "mode": mode, "raw": [fd, err], "refused": str(e)}
    return {"before": before, "mode": mode, "raw": [fd, err], "refused": None}


def embedded_without_memfd_secret(data_dir: str) -> dict[str, object]:
    """An embedding process whose seccomp filter denies memfd_secret: the keyring
    refuses to open on its default backend, and opens on a model only when asked."""
    from secretvault.embedded import open_keyring

    _kernel.deny_syscall(err=errno.ENOSYS)
    refused = None
    try:
        open_keyring(data_dir).close()
    except SecretMemoryUnavailable as e:
        refused = str(e)
    with open_keyring(data_dir, backend="page-model") as ring:
        ring.create_key("k", "ed25519")
        protection = ring.stats().protection
    return {"refused": refused, "model_protection": protection}


def harden() -> dict[str, object]:
    """harden_process() in a child of a same-uid, unprivileged parent.

    As nobody (no CAP_SYS_PTRACE) the parent may read a dumpable child's
    memory; once the child is hardened the kernel's ptrace access check
    refuses it (EPERM).  The child reports its prctl and RLIMIT_CORE state.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    drop_to_nobody()
    _kernel.prctl(_kernel.PR_SET_DUMPABLE, 1)  # setuid reset it to suid_dumpable
    marker = ctypes.create_string_buffer(b"ordinary memory", 16)
    address = _kernel.address_of(marker)
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_child_w)
        os.close(to_parent_r)
        state: dict[str, object] = {}
        os.read(to_child_r, 1)
        state["dumpable_before"] = _kernel.prctl(_kernel.PR_GET_DUMPABLE)
        _sys.harden_process()
        state["dumpable_after"] = _kernel.prctl(_kernel.PR_GET_DUMPABLE)
        state["core_after"] = list(resource.getrlimit(resource.RLIMIT_CORE))
        os.write(to_parent_w, json.dumps(state).encode())
        os.close(to_parent_w)
        os.read(to_child_r, 1)
        os._exit(0)
    os.close(to_child_r)
    os.close(to_parent_w)
    before = _kernel.process_vm_readv(pid, address, 15)
    os.write(to_child_w, b"h")
    state = json.loads(os.read(to_parent_r, 4096))
    after = _kernel.process_vm_readv(pid, address, 15)
    os.write(to_child_w, b"x")
    os.waitpid(pid, 0)
    return {
        "before": before if isinstance(before, int) else before.decode(),
        "after": after if isinstance(after, int) else after.decode(),
        **state,
    }


SCENARIOS: dict[str, Callable[..., dict[str, object]]] = {
    "vm_readv": vm_readv,
    "peek": peek,
    "memlock": memlock,
    "seccomp": seccomp,
    "embedded_without_memfd_secret": embedded_without_memfd_secret,
    "harden": harden,
}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]](*sys.argv[2:])
    print(json.dumps(result), flush=True)
