"""Timing, rounds, medians and per-round ratios shared by every benchmark.

Method (the same for every figure in the table):

* every *form* is a :data:`Rate`: run for about ``seconds``, return
  operations per second (in-process forms are a loop ``run(n)`` timed in
  growing chunks; the RPC forms also append each call's latency, in
  nanoseconds, to a list);
* one *round* runs every form once, for about ``seconds`` each, in a fixed
  order; the benchmark repeats rounds, so a form and its peer are measured
  close together in time, under the same background load;
* a figure is the **median over rounds** of operations per second;
* a ratio is computed **per round** (figure / peer figure in that round) and
  the median of those per-round ratios is reported: noise that hits both
  sides of one round (another engineer's build on this 2-core machine)
  cancels out, instead of biasing one side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Run = Callable[[int], None]
#: seconds -> operations per second
Rate = Callable[[float], float]

#: a chunk of operations grows until it takes this long, so the clock is
#: read a handful of times per 10 ms and its cost vanishes from the figure
_CHUNK_SECONDS = 0.01


class PeerMissing(Exception):
    """A peer (ssh-agent, SoftHSM2, the vault server...) cannot run here.

    The message says what is missing and how to get it; the benchmark
    prints it in the table instead of leaving the row out.
    """


def throughput(run: Run, seconds: float, *, max_chunk: int = 1 << 16) -> float:
    """Operations per second of ``run`` over about ``seconds``."""
    chunk = 1
    done = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        t0 = time.perf_counter()
        run(chunk)
        t1 = time.perf_counter()
        done += chunk
        elapsed = t1 - start
        if t1 - t0 < _CHUNK_SECONDS and chunk < max_chunk:
            chunk *= 2
    return done / elapsed


def loop_rate(run: Run, ops_per_unit: int = 1) -> Rate:
    """A :data:`Rate` from a loop of ``n`` units of ``ops_per_unit`` operations."""
    return lambda seconds: throughput(run, seconds) * ops_per_unit


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(samples: Sequence[int], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``samples``, in their unit."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, round(p / 100.0 * len(ordered) + 0.5 - 1e-9))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass
class Measure:
    """One form's figures over all rounds."""

    key: str
    label: str
    unit: str = "ops/s"
    rounds: list[float] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    missing: str | None = None
    #: CPU time per operation of the process doing the work, per round
    cpu_us_per_op: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        return median(self.rounds)

    @property
    def cpu_us(self) -> float:
        return median(self.cpu_us_per_op)

    @property
    def p50_us(self) -> float:
        return percentile(self.latencies_ns, 50) / 1000.0

    @property
    def p99_us(self) -> float:
        return percentile(self.latencies_ns, 99) / 1000.0


def per_round_ratio(a: Measure, b: Measure) -> float:
    """Median over rounds of a/b, pairing the rounds both were measured in."""
    pairs = [x / y for x, y in zip(a.rounds, b.rounds, strict=False) if y > 0]
    return median(pairs)
