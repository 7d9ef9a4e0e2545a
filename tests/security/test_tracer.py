"""A tracer attached to the server: stats say so, and ``--stop-on-tracer`` stops it.

The tracer is real: a child process that PTRACE_SEIZEs the running
``secretvault serve`` (root has CAP_SYS_PTRACE, which the server's
non-dumpable flag does not stop) and then resumes it from every stop, as
``strace -p`` does, until it is killed (which detaches it) or the server exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests._proc import secretmem_mappings
from tests.integration._support import REPO, Child, cleanup, short_dir, stubs

pytestmark = [pytest.mark.root]

TRACER = r"""
import os, signal, sys
from tests.security import _kernel as k
pid = int(sys.argv[1])
rc, err = k._ptrace(k.PTRACE_SEIZE, pid)
print(f"seized {rc} {err}", flush=True)
if rc != 0:
    sys.exit(1)
while True:  # resume the tracee from every stop, passing its signals on
    try:
        _, status = os.waitpid(pid, k._WALL)
    except ChildProcessError:
        break
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        print(f"tracee exited {status}", flush=True)
        break
    sig = os.WSTOPSIG(status)
    k._ptrace(7, pid, 0, 0 if sig in (signal.SIGTRAP, signal.SIGSTOP) or status >> 16 else sig)
"""


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


def _seize(pid: int) -> subprocess.Popen[str]:
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(pid)], cwd=str(REPO),
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert tracer.stdout is not None
    assert tracer.stdout.readline().strip() == "seized 0 0"
    return tracer


def _tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("TracerPid:")).split()[1])


def _scope() -> int | None:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except FileNotFoundError:
        return None


def test_stats_and_the_cli_report_an_attached_tracer(base: str) -> None:
    child = Child(base)
    try:
        child.wait_ready()
        err = child.stderr()
        assert "traced now: no" in err, err
        assert "root (CAP_SYS_PTRACE) can attach: yes" in err
        v = stubs(child.socket)
        p = v.get_stats().process
        assert p.tracer_pid == 0 and p.root_can_attach and not p.dumpable
        assert p.user_can_attach == "no"  # not dumpable: only CAP_SYS_PTRACE attaches
        assert (p.yama_ptrace_scope if p.HasField("yama_ptrace_scope") else None) == _scope()
        assert not p.stop_on_tracer
        tracer = _seize(child.proc.pid)
        try:
            assert _tracer_pid(child.proc.pid) == tracer.pid
            p = v.get_stats().process
            assert p.tracer_pid == tracer.pid
            cli = subprocess.run(
                [sys.executable, "-m", "secretvault", "stats", "--socket", child.socket],
                capture_output=True, text=True, cwd=str(REPO), timeout=60,
                env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
            assert cli.returncode == 0, cli.stderr
            assert f"YES, by pid {tracer.pid}" in cli.stdout, cli.stdout
            assert child.proc.poll() is None  # without the option it keeps serving
        finally:
            tracer.kill()
            tracer.wait()
        deadline = time.monotonic() + 10
        while v.get_stats().process.tracer_pid and time.monotonic() < deadline:
            time.sleep(0.05)
        assert v.get_stats().process.tracer_pid == 0
    finally:
        child.close()


def test_stop_on_tracer_zeroes_secret_memory_and_exits(base: str) -> None:
    audit = os.path.join(base, "audit.log")
    child = Child(base, ["--stop-on-tracer", "--audit-log", audit])
    try:
        child.wait_ready()
        assert "on a tracer: zero secret memory and exit (checked every 0.1 s)" in \
            child.stderr()
        v = stubs(child.socket)
        v.create("k")
        p = v.get_stats().process
        assert p.stop_on_tracer and p.tracer_check_seconds == pytest.approx(0.1)
        pid = child.proc.pid
        if os.path.exists("/proc/self/map_files"):
            assert secretmem_mappings(pid) or v.get_stats().protection == "model"
        tracer = _seize(pid)
        try:
            assert child.proc.wait(timeout=30) == 3
        finally:
            tracer.kill()
            tracer.wait()
        assert not os.path.exists(f"/proc/{pid}")
        err = child.stderr().strip().splitlines()
        assert err[-1] == (f"secretvault: error: a tracer (pid {tracer.pid}) attached to the "
                           "server: secret memory zeroed and unmapped; exiting (fix: find who "
                           "attached; set kernel.yama.ptrace_scope=3 to forbid it)"), err
        assert not any("Traceback" in line for line in err)
        with open(audit) as f:
            last = json.loads(f.read().splitlines()[-1])
        assert last["identity"] == f"pid:{tracer.pid}" and last["listener"] == "ptrace"
        assert (last["operation"], last["result"]) == ("tracer_attached", "stopped")
        assert not os.path.exists(child.socket)
    finally:
        child.close()
