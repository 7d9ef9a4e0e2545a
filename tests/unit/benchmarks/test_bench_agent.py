"""bench_agent: both agents run, are checked, and the 3x target is reported."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_agent


@pytest.mark.memfd_secret
def test_a_run_reports_both_agents_and_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_agent.main(["--rounds", "1", "--seconds", "0.05", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    vault = doc["measures"]["vault.agent.sign"]
    assert vault["missing"] is None and vault["median"] > 0 and vault["p99_us"] > 0
    assert vault["cpu_us_per_op"] > 0  # the server process's CPU, from /proc
    peer = doc["measures"]["peer.ssh_agent.ed25519"]
    assert (peer["missing"] is None and peer["median"] > 0) or "setup-peers" in peer["missing"]
    assert [r["target"] for r in doc["rows"]] == ["≥3x"]
    assert doc["rows"][0]["verdict"] in ("PASS", "MISS", "MISSING")
