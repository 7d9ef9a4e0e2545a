"""A root server drops the capabilities it does not need, so RLIMIT_MEMLOCK holds.

Each test runs ``secretvault serve`` as root in a child process under
``prlimit --memlock=16384`` (4 secret pages) and reads the child's capability
sets from /proc/PID/status from outside.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import grpc
import pytest

from tests.integration._support import ED25519, Child, cleanup, short_dir, stubs

pytestmark = [
    pytest.mark.root,
    pytest.mark.memfd_secret,
    pytest.mark.skipif(shutil.which("prlimit") is None,
                       reason="needs prlimit (util-linux) to set the child's RLIMIT_MEMLOCK"),
]

CAP_IPC_LOCK = 14
LIMIT = 16384


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


def _caps(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in f)
                if k.startswith("Cap")}


def _fill(child: Child, most: int) -> tuple[int, grpc.RpcError | None]:
    """Create Ed25519 keys until refused or ``most`` exist: (created, the refusal)."""
    v = stubs(child.socket)
    for i in range(most):
        try:
            v.create(f"fill/{i}", ED25519)
        except grpc.RpcError as e:
            return i, e
    return most, None


def test_root_server_drops_capabilities_and_is_held_to_memlock(base: str) -> None:
    child = Child(base, prefix=["prlimit", f"--memlock={LIMIT}:{LIMIT}"])
    try:
        child.wait_ready()
        caps = _caps(child.proc.pid)
        assert not caps["CapEff"] & (1 << CAP_IPC_LOCK), caps
        # nothing is needed after start: every set is empty, the bounding set too
        assert caps == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
        err = child.stderr()
        assert "memlock      16.0 KiB (locked now" in err, err
        assert "not enforced" not in err
        assert "capabilities none (dropped at start" in err, err
        stats = stubs(child.socket).get_stats()
        assert not stats.memlock.cap_ipc_lock and stats.memlock.soft == LIMIT
        assert list(stats.process.capabilities_effective) == []
        created, refused = _fill(child, 2000)
        assert refused is not None, "2000 keys fit in 16 KiB of memlock?"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()
        meta = dict(refused.trailing_metadata() or ())
        assert meta["secretvault-error"] == "MemlockExceeded"
        assert 60 <= created < 1000
        assert child.proc.poll() is None  # still serving
    finally:
        child.close()


def test_keep_capabilities_leaves_memlock_unenforced(base: str) -> None:
    child = Child(base, ["--keep-capabilities"],
                  prefix=["prlimit", f"--memlock={LIMIT}:{LIMIT}"])
    try:
        child.wait_ready()
        assert _caps(child.proc.pid)["CapEff"] & (1 << CAP_IPC_LOCK)
        assert "not enforced: the server has CAP_IPC_LOCK" in child.stderr()
        stats = stubs(child.socket).get_stats()
        assert stats.memlock.cap_ipc_lock
        assert "cap_ipc_lock" in stats.process.capabilities_effective
        created, refused = _fill(child, 1200)
        assert refused is None and created == 1200, refused
    finally:
        child.close()


def test_caps_binding_needs_go_once_the_listeners_are_bound(base: str) -> None:
    # a socket given to a group root is not in needs CAP_CHOWN: kept until bound
    group = 65534
    sock = os.path.join(base, "ci", "vault.sock")
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write(f'[identities.ci]\n[[identities.ci.sockets]]\npath = "{sock}"\n'
                f'group = {group}\nmode = "0660"\n')
    child = Child(base, ["--policy", policy], prefix=["prlimit", f"--memlock={LIMIT}:{LIMIT}"])
    try:
        child.wait_ready()
        assert os.stat(sock).st_gid == group
        pid = child.proc.pid
        assert _caps(pid) == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
        threads = [_task_caps(pid, t)
                   for t in os.listdir(f"/proc/{pid}/task")]
        # no thread has CAP_IPC_LOCK; those that hold anything hold only CAP_CHOWN
        assert all(not c["CapEff"] & (1 << CAP_IPC_LOCK) for c in threads)
        assert all(c["CapEff"] in (0, 1) for c in threads), threads
        _, refused = _fill(child, 2000)
        assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        effective = list(stubs(child.socket).get_stats().process.capabilities_effective)
        assert effective in ([], ["cap_chown"])
        if effective:
            assert "capabilities chown (still held by grpc's threads" in child.stderr()
    finally:
        child.close()


def _task_caps(pid: int, tid: str) -> dict[str, int]:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in f)
                if k.startswith("Cap")}


def _threads_holding_capabilities(base: str, *, metrics: bool) -> int:
    """How many of a server's threads hold any capability, its policy giving a
    socket a group (so CAP_CHOWN is kept until the listeners are bound)."""
    import socket
    import time

    sock = os.path.join(base, "ci", "vault.sock")
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write(f'[identities.ci]\n[[identities.ci.sockets]]\npath = "{sock}"\n'
                'group = 65534\nmode = "0660"\n')
    args = ["--policy", policy]
    if metrics:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args += ["--metrics", f"127.0.0.1:{port}"]
    child = Child(base, args)
    try:
        child.wait_ready()
        time.sleep(0.3)  # let every thread the start made settle
        pid = child.proc.pid
        return sum(1 for t in os.listdir(f"/proc/{pid}/task") if _task_caps(pid, t)["CapEff"])
    finally:
        child.close()


def test_the_metrics_endpoint_serves_on_a_thread_with_no_capability() -> None:
    """Threads inherit their creator's capabilities: the endpoint binds before
    the drop and starts its thread (whose request threads copy it) after."""
    counts = {}
    for metrics in (False, True):
        base = short_dir()
        try:
            counts[metrics] = _threads_holding_capabilities(base, metrics=metrics)
        finally:
            cleanup(base)
    assert counts[True] == counts[False], counts
