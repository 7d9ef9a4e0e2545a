"""Rounds of forms, each next to its peer: the runner every benchmark table uses.

A :class:`Bench` holds forms in table order and runs them round after round
(``benchmarks/_measure.py`` has the method: medians over rounds, ratios per
round); a form whose peer cannot run here is kept, as MISSING with the
reason.  CPU time per operation is read from the process doing the work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable

from benchmarks._measure import Measure, PeerMissing, Rate, Run, loop_rate
from benchmarks._report import loadavg

#: CPU seconds of the process doing a form's work
CpuClock = Callable[[], float]


class Bench:
    """Forms in table order; runs them round after round."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.measures: dict[str, Measure] = {}
        self._forms: list[tuple[Measure, Rate, CpuClock]] = []
        self._log = log

    def add(self, key: str, label: str, make: Callable[[list[int]], Rate],
            cpu: CpuClock = time.process_time) -> Measure:
        """A form; ``cpu`` reads the CPU seconds of the process doing the work
        (this one for in-process forms, the server's or agent's otherwise)."""
        m = self.measure(key, label)
        try:
            self._forms.append((m, make(m.latencies_ns), cpu))
        except PeerMissing as e:
            m.missing = str(e)
        return m

    def measure(self, key: str, label: str, unit: str = "ops/s") -> Measure:
        if key not in self.measures:
            self.measures[key] = Measure(key, label, unit)
        return self.measures[key]

    def missing(self, key: str, label: str, reason: str) -> Measure:
        m = self.measure(key, label)
        m.missing = reason
        return m

    def run(self, rounds: int, seconds: float) -> None:
        # warm-up: first calls pay for connections, TLS handshakes, caches
        for m, rate, cpu in self._forms:
            self._once(m, rate, cpu, min(0.1, seconds), keep=False)
        for r in range(rounds):
            t0 = time.monotonic()
            for m, rate, cpu in self._forms:
                if m.missing is None:
                    self._once(m, rate, cpu, seconds, keep=True)
            self._log(f"round {r + 1}/{rounds} done in {time.monotonic() - t0:.1f} s "
                      f"(load {loadavg()})")

    def _once(self, m: Measure, rate: Rate, cpu: CpuClock, seconds: float, *,
              keep: bool) -> None:
        try:
            c0, t0 = cpu(), time.perf_counter()
            value = rate(seconds)
            c1, t1 = cpu(), time.perf_counter()
        except Exception as e:  # a peer that dies mid-run is reported, not fatal
            m.missing = f"failed during the run: {type(e).__name__}: {str(e)[:200]}"
            return
        if keep:
            m.rounds.append(value)
            ops = value * (t1 - t0)
            if ops > 0:
                m.cpu_us_per_op.append((c1 - c0) / ops * 1e6)
        else:
            m.latencies_ns.clear()



def process_cpu(pid: int) -> CpuClock:
    """CPU seconds (user + system, all threads) of another process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # the command name (field 2) may contain spaces: split after it
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    return read


def process_tree_cpu(pid: int) -> CpuClock:
    """CPU seconds of ``pid`` and of its children now (``serve --workers``: the
    supervisor and every worker), from /proc."""
    own = process_cpu(pid)

    def read() -> float:
        total = own()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid:  # ppid
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    return read


def loop_form(run: Run, ops_per_unit: int = 1) -> Callable[[list[int]], Rate]:
    """An in-process loop form (no per-call latency recorded)."""

    def make(_latencies: list[int]) -> Rate:
        return loop_rate(run, ops_per_unit)

    return make


# --- the rounds' options, the same in every benchmark table ---------------------------

QUICK_ROUNDS = 3
QUICK_SECONDS = 0.25
SECONDS = 1.0


def add_round_options(p: argparse.ArgumentParser, *, rounds: int, quick_takes: str) -> None:
    """``--quick``, ``--rounds`` and ``--seconds``, with ``rounds`` the default."""
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_ROUNDS} rounds of {QUICK_SECONDS:g} s ({quick_takes})")
    p.add_argument("--rounds", type=int, help=f"rounds (default {rounds}, --quick {QUICK_ROUNDS})")
    p.add_argument("--seconds", type=float,
                   help=f"seconds per form per round ({SECONDS:g}; --quick {QUICK_SECONDS:g})")
    p.set_defaults(default_rounds=rounds)


def rounds_and_seconds(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, float]:
    """What :func:`add_round_options` asked for; a usage error unless both are positive."""
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else args.default_rounds)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    if rounds < 1 or seconds <= 0:
        p.error("--rounds and --seconds must be positive")
    return rounds, seconds


def run_bench(build: Callable[[Bench, contextlib.ExitStack], None], rounds: int,
              seconds: float, log: Callable[[str], None]) -> Bench:
    """Set every form up with ``build`` (its servers and peers on the stack), say which
    are missing, run the rounds, then stop what ``build`` started."""
    with contextlib.ExitStack() as stack:
        bench = Bench(log)
        build(bench, stack)
        for m in bench.measures.values():
            if m.missing:
                log(f"MISSING {m.key}: {m.missing}")
        bench.run(rounds, seconds)
    return bench
