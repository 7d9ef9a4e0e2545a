"""Who may attach a debugger, from Yama's ptrace_scope and the dumpable flag; capability names."""

from __future__ import annotations

import pytest

from secretvault.backends import _process


@pytest.mark.parametrize(("scope", "dumpable", "user"), [
    (None, True, "yes"), (0, True, "yes"), (1, True, "ancestors"), (2, True, "no"),
    (3, True, "no"), (None, False, "no"), (0, False, "no"), (1, False, "no"),
])
def test_who_of_the_servers_user_may_attach(scope: int | None, dumpable: bool,
                                            user: str) -> None:
    assert _process.user_can_attach(scope, dumpable) == user


def test_capability_names_follow_the_kernels_numbers() -> None:
    assert _process.cap_names(1 << 14 | 1) == ("cap_chown", "cap_ipc_lock")
    assert _process.cap_names(1 << 40 | 1 << 45) == ("cap_checkpoint_restore", "cap_45")
    assert _process.CAP["sys_ptrace"] == 19 and _process.CAP["net_bind_service"] == 10


def test_this_process_reports_its_own_state() -> None:
    e = _process.exposure()
    with open("/proc/self/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    assert e.tracer_pid == int(status["TracerPid"])
    assert e.effective == _process.cap_names(int(status["CapEff"], 16))
    assert e.root_can_attach == (e.yama_ptrace_scope != 3)
