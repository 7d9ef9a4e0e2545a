"""The agent's audit: an attempt that cannot be written stops the change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secretvault.api.errors import AuditUnavailable
from secretvault.vault.agent.record import Recorder
from secretvault.vault.audit import AuditLog
from secretvault.vault.stats import OperationCounters
from tests.unit.vault.agent._support import session


def test_lines_and_counts(tmp_path: Path) -> None:
    rec = Recorder(AuditLog(str(tmp_path / "a.log")), OperationCounters())
    assert rec.attempt(session("dev"), "ssh_add", "SHA256:x")
    rec.result(session("dev"), "ssh_add", "SHA256:x", "ok")
    assert rec.detail(session("dev"), "ssh_session_bind", "ok", {"host_key": "SHA256:h"})
    rec.system("dev", "ssh-agent:/p", "ssh_expire", "SHA256:x")
    lines = [json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines()]
    assert [(r["operation"], r["result"]) for r in lines] == [
        ("ssh_add", "attempt"), ("ssh_add", "ok"), ("ssh_session_bind", "ok"),
        ("ssh_expire", "ok")]
    assert lines[2]["detail"] == {"host_key": "SHA256:h"}
    assert all(r["identity"] == "dev" for r in lines)
    counts = {(c.operation, c.result) for c in rec.counters.snapshot()}
    assert ("ssh_add", "ok") in counts and ("ssh_add", "attempt") not in counts


def test_a_full_disk_refuses_the_change() -> None:
    rec = Recorder(AuditLog("/dev/full"), OperationCounters())
    assert not rec.attempt(session(), "ssh_add", None)
    with pytest.raises(AuditUnavailable):
        rec.done(session(), "ssh_sign", "k", 1, "ok")
    rec.result(session(), "ssh_add", None, "ok")  # logged, not raised
    assert not rec.detail(session(), "ssh_session_bind", "ok", {})
