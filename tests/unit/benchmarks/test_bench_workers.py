"""benchmarks/bench_workers.py: every form runs against real servers, and the run reports
the four batch targets and the relay's own CPU."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from benchmarks import bench_workers


class _Future:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[object], None]] = []

    def add_done_callback(self, fn: Callable[[object], None]) -> None:
        self.callbacks.append(fn)

    def finish(self) -> None:
        for fn in self.callbacks:
            fn(self)


class _Call:
    def __init__(self, i: int, taken: list[int], futures: list[_Future]) -> None:
        self.i, self._taken, self._futures = i, taken, futures

    def future(self, request: object) -> _Future:
        self._taken.append(self.i)
        fut = _Future()
        self._futures.append(fut)
        return fut


def test_calls_take_the_connections_in_turn() -> None:
    taken: list[int] = []
    futures: list[_Future] = []
    spread = bench_workers.Spread([_Call(i, taken, futures) for i in range(3)])
    for _ in range(7):
        spread.future(None)
    assert taken == [0, 1, 2, 0, 1, 2, 0]


def test_a_call_takes_the_connection_with_the_fewest_in_flight() -> None:
    """A connection whose worker answers faster gets more of the calls."""
    taken: list[int] = []
    futures: list[_Future] = []
    spread = bench_workers.Spread([_Call(i, taken, futures) for i in range(2)])
    spread.future(None)
    spread.future(None)  # one on each
    futures[1].finish()  # connection 1 answered; 0 has not
    spread.future(None)  # to 1, the one with none in flight
    assert taken == [0, 1, 1]
    futures[0].finish()
    futures[2].finish()
    assert spread._inflight == [0, 0]


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
