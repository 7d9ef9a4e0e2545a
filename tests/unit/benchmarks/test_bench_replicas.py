"""benchmarks/bench_replicas.py: every form runs against real processes and a real PostgreSQL.

One short run: the replicas replicate (every lag sample is a key created on
one process and then served by the other), the creates commit, and the
report carries each row with its peer and the lag's p50/p99.  No figure is
asserted (speed is the benchmark's to report, not a test's).
"""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_replicas
from tests import _pg


def test_a_run_measures_every_form_and_reports_the_lag(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    why = _pg.unavailable()
    if why is not None:
        pytest.skip(why)
    assert bench_replicas.main(["--rounds", "1", "--seconds", "0.1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    measures = doc["measures"]
    assert set(measures) == set(bench_replicas.LABELS)
    for key, m in measures.items():
        assert m["missing"] is None, (key, m["missing"])
        assert m["rounds"] and m["median"] > 0, key
        assert m["latency_samples"] > 0, key
    assert [(r["figure"], r["peer"]) for r in doc["rows"]] == [
        ("lag.pg", "lag.sqlite"), ("create.pg", "create.sqlite"), ("store.feed", "store.plain")]
    lag = doc["config"]["lag"]
    assert set(lag) == {"lag.pg", "lag.sqlite"}
    assert all(f["p50_ms"] <= f["p99_ms"] for f in lag.values())

