"""benchmarks/bench_workers.py: every form runs against real servers, and the run reports
the four batch targets and the relay's own CPU."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_workers


def test_calls_take_the_connections_in_turn() -> None:
    taken: list[int] = []

    class Call:
        def __init__(self, i: int) -> None:
            self.i = i

        def future(self, request: object) -> int:
            taken.append(self.i)
            return self.i

    spread = bench_workers.Spread([Call(0), Call(1), Call(2)])
    for _ in range(7):
        spread.future(None)
    assert taken == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.memfd_secret
def test_a_run_reports_every_form_and_the_batch_targets(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_workers.main(["--rounds", "1", "--seconds", "0.1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key, m in doc["measures"].items():
        assert m["missing"] is None and m["median"] > 0, key
    targets = {t["target"] for t in doc["targets"]}
    for transport in ("Unix socket", "mutual TLS, 127.0.0.1"):
        assert f"batches, {transport}: 2 workers >= 1.5x one worker" in targets
        assert (f"batches, {transport}: 2 workers >= 0.9x one core's in-process libsodium"
                in targets)
    # the relay's share is measured where there is one: the workers' Unix sockets
    assert set(doc["config"]["relay_cpu_us_per_op"]) == {
        f"{w}.unix.{f}" for w in ("w1", "w2") for f in ("unary32", "batch32")}
