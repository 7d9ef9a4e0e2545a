"""What a direct-map split costs at the fault that makes it, on this kernel.

``python -m benchmarks.bench_split_cost [--rounds N] [--pages N] [--json]``
(root, memfd_secret(2), x86-64).

Each round maps a fresh memfd_secret region and a fresh private anonymous
region (``MADV_NOHUGEPAGE``: one 4 KiB page per fault) of ``--pages`` pages
each, and touches them page by page, a secret page then an anonymous one,
timing each first touch: one byte written through libsodium's
``sodium_memzero``, ``perf_counter_ns`` on either side.  After every touch
the split counters of ``/proc/vmstat`` are read; after the round
``/proc/self/pagemap`` gives every secret page's physical frame.  Each
secret fault is then sorted by what it did to the direct map:

* **split** -- ``direct_map_level2_splits`` rose by one and the page is the
  run's first in its 2 MiB physical region: the fault split a whole 2 MiB
  entry (allocating a page-table page) before removing its page;
* **1 GiB split** -- the level-3 counter rose as well: a whole 1 GiB entry
  was split first, then the 2 MiB one;
* **already split** -- no counter moved: the region was split earlier in the
  run or before it (the first touches of regions split *before* the run are
  counted as ``pre-split regions``);
* **ambiguous** -- anything else (another process split at the same moment):
  left out, and counted.

Every secret fault zeroes a page, removes it from the direct map and flushes
the kernel TLB for it; only a split fault also splits.  Anonymous faults of
the same rounds are the peer (they never touch the direct map; one that saw
a counter move is left out too).  A second touch of already faulted pages
gives the floor: the clock and the call, no fault.

Figures are medians and p99 (nearest rank) over every sample of every round;
ratios are medians of per-round ratios of the round's medians.  Splits are
permanent until reboot, so every run uses up about ``pages / 510`` of the
machine's fresh 2 MiB regions: keep ``--pages`` modest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks._measure import median, percentile
from secretvault.api.errors import SecretMemoryUnavailable
from secretvault.backends import _procfs, _sodium, _sys

PAGE = _procfs.PAGE_SIZE
PAGES_PER_2M = _procfs.PAGES_PER_2M

#: the kinds of touch, in table order: (key, label)
KINDS = (
    ("split", "secret fault that split a whole 2 MiB entry"),
    ("split_1g", "secret fault that split a whole 1 GiB entry, then 2 MiB"),
    ("already", "secret fault in an already-split 2 MiB region"),
    ("anon", "anonymous fault (4 KiB, no THP): the peer"),
    ("floor", "touch of a faulted page (no fault): the floor"),
)
#: (figure, peer) pairs whose per-round ratio is reported
RATIOS = (("split", "anon"), ("already", "anon"), ("split", "already"))

_PMU_DIRS = ("cpu", "cpu_core", "cpu_atom")


def not_measured(pmu: bool) -> str:
    """Why the lasting cost of a split (TLB misses) is not measured here."""
    where = (
        "this machine has a hardware PMU, but a user-space counter cannot tell the "
        "kernel's direct-map misses from its other misses"
        if pmu
        else "this VM exposes no hardware PMU (/sys/bus/event_source/devices has no cpu "
        "entry), so there is no TLB-miss counter to read"
    )
    return (
        "NOT MEASURED: the lasting cost of a split. After it, kernel accesses to that "
        "2 MiB (page cache copies, networking, anything through the direct map) use 512 "
        "4 KiB TLB entries instead of one, and miss the TLB more often. Measuring that "
        "needs hardware counters (dTLB misses, page-walk cycles) attributed to "
        f"direct-map accesses: {where}. Timing faults by whether their page's region is "
        "split would not measure it either: a fault zeroes one page, at most one more page "
        "walk, far inside a fault's run-to-run spread. On a VM every guest TLB miss also "
        "walks the host's nested page tables, so a figure taken here would not be bare "
        "metal's either. This benchmark does not estimate it."
    )


def has_pmu() -> bool:
    return any(os.path.isdir(f"/sys/bus/event_source/devices/{d}") for d in _PMU_DIRS)


def missing_prerequisite() -> str | None:
    """What this machine lacks for the measurement, or None."""
    if platform.machine() != "x86_64":
        return f"the direct-map split counters are x86-64's; this is {platform.machine()}"
    if os.geteuid() != 0:
        return "root (CAP_SYS_ADMIN), to read physical frames from /proc/self/pagemap"
    if "direct_map_level2_splits" not in _procfs.vmstat("direct_map_level2_splits"):
        return "/proc/vmstat has no direct_map_level2_splits (kernel older than 5.4?)"
    try:
        _sys.munmap(_sys.create_secret_region(PAGE), PAGE)
    except SecretMemoryUnavailable as e:
        return f"memfd_secret(2): {e}"
    return None


# --- sorting the faults ------------------------------------------------------------------


def classify(
    deltas: Sequence[tuple[int, int]], frames: Sequence[int], seen: set[int]
) -> tuple[list[str], int]:
    """The kind of each secret fault, and how many were first touches of
    regions split before the run.

    ``deltas[i]`` is (level-2, level-3) counter change across fault ``i``,
    ``frames[i]`` its page's frame; ``seen`` holds the 2 MiB regions the run
    touched before (updated in place).
    """
    kinds: list[str] = []
    pre_split = 0
    for (d2, d3), pfn in zip(deltas, frames, strict=True):
        region = pfn // PAGES_PER_2M
        new = region not in seen
        seen.add(region)
        if d2 == 0 and d3 == 0:
            kinds.append("already")
            pre_split += new
        elif d2 == 1 and new:
            kinds.append("split" if d3 == 0 else "split_1g" if d3 == 1 else "ambiguous")
        else:
            kinds.append("ambiguous")
    return kinds, pre_split


# --- the run -----------------------------------------------------------------------------


@dataclass
class Result:
    pages: int
    rounds: int
    samples: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k, _ in KINDS})
    round_medians: list[dict[str, float]] = field(default_factory=list)
    ambiguous: int = 0
    anon_ambiguous: int = 0
    pre_split: int = 0
    counters_before: tuple[int, int] = (0, 0)
    counters_after: tuple[int, int] = (0, 0)
    directmap_before: tuple[int, int, int] = (0, 0, 0)
    directmap_after: tuple[int, int, int] = (0, 0, 0)
    pmu: bool = False
    seconds: float = 0.0

    def ratio(self, a: str, b: str) -> float:
        pairs = [r[a] / r[b] for r in self.round_medians if a in r and r.get(b)]
        return median(pairs)

    def summary(self) -> dict[str, object]:
        """The figures (None where a kind has no sample), for JSON and the table."""
        kinds = {
            k: {
                "label": label,
                "n": len(self.samples[k]),
                "median_us": _num(percentile(self.samples[k], 50) / 1000),
                "p99_us": _num(percentile(self.samples[k], 99) / 1000),
            }
            for k, label in KINDS
        }
        ratios = {f"{a}/{b}": _num(self.ratio(a, b)) for a, b in RATIOS}
        split = percentile(self.samples["split"], 50)
        extra = _num((split - percentile(self.samples["already"], 50)) / 1000)
        return {
            "pages_per_round": self.pages,
            "rounds": self.rounds,
            "kinds": kinds,
            "ratios_median_of_rounds": ratios,
            "split_extra_median_us": extra,
            "ambiguous_secret_faults": self.ambiguous,
            "ambiguous_anonymous_faults": self.anon_ambiguous,
            "pre_split_regions_first_touched": self.pre_split,
            "level2_splits": self.counters_after[0] - self.counters_before[0],
            "level3_splits": self.counters_after[1] - self.counters_before[1],
            "directmap_kb_before": [b >> 10 for b in self.directmap_before],
            "directmap_kb_after": [b >> 10 for b in self.directmap_after],
            "not_measured": not_measured(self.pmu),
            "seconds": self.seconds,
        }


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _directmap() -> tuple[int, int, int]:
    mi = _procfs.meminfo()
    return mi.get("DirectMap4k", 0), mi.get("DirectMap2M", 0), mi.get("DirectMap1G", 0)


def _round(pages: int, counters: _procfs.SplitCounters, seen: set[int], res: Result,
           held: list[tuple[int, int]]) -> None:
    length = pages * PAGE
    secret = _sys.create_secret_region(length)
    held.append((secret, length))
    anon = _sys.mmap_anonymous(length)
    held.append((anon, length))
    sp = [_sodium.pointer(secret + i * PAGE) for i in range(pages)]
    ap = [_sodium.pointer(anon + i * PAGE) for i in range(pages)]
    zero = _sodium.sodium_memzero
    clock = time.perf_counter_ns
    read = counters.read
    s_ns = [0] * pages
    a_ns = [0] * pages
    s_d: list[tuple[int, int]] = [(0, 0)] * pages
    a_ok = [True] * pages
    last = read()
    for i in range(pages):
        t0 = clock()
        zero(sp[i], 1)  # first touch: the secret page fault
        t1 = clock()
        now = read()
        s_ns[i] = t1 - t0
        s_d[i] = (now[0] - last[0], now[1] - last[1])
        t0 = clock()
        zero(ap[i], 1)  # first touch: the anonymous page fault
        t1 = clock()
        last = read()
        a_ns[i] = t1 - t0
        a_ok[i] = last == now
    floor = res.samples["floor"]
    for i in range(0, pages, max(1, pages // 1024)):
        for p in (sp[i], ap[i]):
            t0 = clock()
            zero(p, 1)
            floor.append(clock() - t0)
    present, frames = _procfs.pagemap(secret, pages)
    if len(frames) != pages:
        raise RuntimeError(
            f"/proc/self/pagemap gave {len(frames)} frames for {pages} faulted secret pages "
            f"({present} present): root (CAP_SYS_ADMIN) is needed to read them"
        )
    kinds, pre = classify(s_d, frames, seen)
    res.pre_split += pre
    by_kind: dict[str, list[int]] = {}
    for kind, t in zip(kinds, s_ns, strict=True):
        by_kind.setdefault(kind, []).append(t)
    res.ambiguous += len(by_kind.pop("ambiguous", []))
    by_kind["anon"] = [t for t, ok in zip(a_ns, a_ok, strict=True) if ok]
    res.anon_ambiguous += pages - len(by_kind["anon"])
    medians: dict[str, float] = {}
    for kind, times in by_kind.items():
        res.samples[kind].extend(times)
        if times:
            medians[kind] = float(statistics.median(times))
    res.round_medians.append(medians)


def measure(pages: int, rounds: int, log: bool = True) -> Result:
    """Run the rounds; every region stays mapped until the end, so each round
    faults fresh memory rather than the pages the previous one freed."""
    res = Result(pages, rounds, pmu=has_pmu())
    counters = _procfs.SplitCounters()
    held: list[tuple[int, int]] = []
    seen: set[int] = set()
    t0 = time.monotonic()
    try:
        res.counters_before, res.directmap_before = counters.read(), _directmap()
        for r in range(rounds):
            _round(pages, counters, seen, res, held)
            if log:
                m = res.round_medians[-1]
                print(
                    f"round {r + 1}/{rounds}: "
                    + ", ".join(f"{k} {v / 1000:.2f} us" for k, v in sorted(m.items())),
                    file=sys.stderr,
                )
        res.counters_after, res.directmap_after = counters.read(), _directmap()
    finally:
        counters.close()
        for addr, length in held:
            _sys.munmap(addr, length)
    res.seconds = time.monotonic() - t0
    return res


# --- the output --------------------------------------------------------------------------


def print_table(res: Result) -> None:
    from rich.console import Console
    from rich.table import Table

    s = res.summary()
    kinds: dict[str, dict[str, float | None]] = s["kinds"]  # type: ignore[assignment]
    table = Table(
        title=(
            f"fault latency per page, memfd_secret against anonymous memory: {res.rounds} "
            f"rounds of {res.pages:,} pages each (medians and p99 over all samples)"
        ),
        title_justify="left",
    )
    for col in ("touch", "n", "median", "p99", "ratio (median of rounds)"):
        table.add_column(col, justify="left" if col == "touch" else "right")
    ratio_of = {a: (b, res.ratio(a, b)) for a, b in RATIOS[:2]}
    for key, label in KINDS:
        k = kinds[key]
        peer = ratio_of.get(key)
        n = int(k["n"] or 0)
        table.add_row(
            label,
            f"{n:,}",
            f"{k['median_us']:.2f} us" if n else "-",
            f"{k['p99_us']:.2f} us" if n else "-",
            f"{peer[1]:.2f}x {peer[0]}" if peer and n else "",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    console.print(table)
    dm0, dm1 = s["directmap_kb_before"], s["directmap_kb_after"]
    extra = s["split_extra_median_us"]
    console.print(
        (
            f"  a split fault against a fault in an already-split region: "
            f"{res.ratio('split', 'already'):.2f}x (median of rounds), "
            f"+{extra:.2f} us at the median\n"
            if extra is not None
            else "  no fault of this run split a whole 2 MiB entry: raise --pages (the "
            "machine's fresh regions are fewer after every run)\n"
        )
        + f"  left out: {res.ambiguous} secret and {res.anon_ambiguous} anonymous faults "
        f"during which other activity moved the counters\n"
        f"  {res.pre_split} first touches of regions split before the run; this run made "
        f"{s['level2_splits']} level-2 and {s['level3_splits']} level-3 splits "
        f"(system-wide counters); DirectMap4k/2M/1G {dm0} -> {dm1} kB\n"
        "  the figures include the clock and the call (the floor row) and, for secret "
        "faults, the kernel TLB flush's IPI to the other CPU, which on a VM goes through "
        f"the hypervisor: they are this VM's, not bare metal's. {res.seconds:.0f} s.",
        highlight=False,
    )
    console.print("  " + not_measured(res.pmu), highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_split_cost",
        description="Fault latency of memfd_secret against anonymous memory, in fresh "
        "and already-split 2 MiB regions of the direct map.",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    parser.add_argument(
        "--pages",
        type=int,
        help="secret (and anonymous) pages per round (default 65536: 256 MiB; --quick "
        "16384). Most land in regions split before; on the project machine a round of "
        "65536 made about 30 new splits, which stay until reboot",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 16384 pages")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    pages = args.pages if args.pages is not None else 16384 if args.quick else 65536
    if rounds < 1 or pages < 1:
        parser.error("--rounds and --pages must be positive")
    missing = missing_prerequisite()
    if missing:
        print(f"bench_split_cost: cannot measure here: needs {missing}", file=sys.stderr)
        return 1
    res = measure(pages, rounds, log=not args.json)
    if args.json:
        print(json.dumps(res.summary(), indent=2))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
