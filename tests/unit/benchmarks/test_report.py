"""The report's arithmetic: verdicts, missing peers, the JSON document."""

from __future__ import annotations

import io
import json
import math

from benchmarks._measure import Measure
from benchmarks._report import Report, Row, Target, machine


def test_target_directions() -> None:
    assert Target("t", 0.9).verdict(0.9) == "PASS"
    assert Target("t", 0.9).verdict(0.89) == "MISS"
    assert Target("t", 1.0, strict=True).verdict(1.0) == "MISS"
    assert Target("t", 1.0, strict=True).verdict(1.01) == "PASS"
    assert Target("t", 1.1, at_most=True).verdict(1.05) == "PASS"
    assert Target("t", 1.1, at_most=True).verdict(1.2) == "MISS"
    assert Target("t", 3.0).verdict(float("nan")) == "MISSING"


def _report(peer: Measure) -> Report:
    fig = Measure("sv.unix.unary1", "sv", rounds=[100.0, 200.0, 300.0],
                  latencies_ns=[1000, 2000, 3000])
    rows = [Row("s", "unary", fig, peer, Target("beats", 3.0))]
    return Report(machine(), {"rounds": 3, "seconds": 0.1, "quick": True, "elapsed_s": 1.0},
                  {"a": fig, "b": peer}, rows)


def test_a_missing_peer_is_shown_with_its_reason_not_dropped() -> None:
    peer = Measure("peer.ssh_agent.ed25519", "agent", missing="ssh-agent not found on PATH")
    report = _report(peer)
    assert math.isnan(report.rows[0].ratio)
    assert report.rows[0].verdict == "MISSING"
    out = io.StringIO()
    report.print(out)
    text = out.getvalue()
    assert "MISSING [1]" in text and "ssh-agent not found on PATH" in text
    doc = report.as_json()
    assert doc["targets"][0]["verdict"] == "MISSING"
    assert doc["measures"]["b"]["missing"] == "ssh-agent not found on PATH"


def test_json_carries_rounds_ratios_and_latency() -> None:
    peer = Measure("peer", "peer", rounds=[50.0, 50.0, 150.0])
    report = _report(peer)
    out = io.StringIO()
    report.write_json(out)
    doc = json.loads(out.getvalue())
    # per-round ratios 2, 4, 2 -> median 2
    assert doc["targets"] == [{"target": "beats", "ratio": 2.0, "threshold": 3.0,
                               "verdict": "MISS", "figure": "sv.unix.unary1", "peer": "peer"}]
    assert doc["measures"]["a"]["median"] == 200.0
    assert doc["measures"]["a"]["p50_us"] == 2.0
    assert doc["machine"]["cores"] >= 1
