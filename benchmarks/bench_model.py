"""How fast the models simulate page faults, beside the real kernel's.

``python -m benchmarks.bench_model [--rounds N] [--faults N]`` prints:

1. **page-model faults per second**: ``--faults`` (default 1,000,000)
   simulated secret page faults on a 4 GiB machine with its default
   background workload (one background operation per fault), in files of
   256 pages, the oldest file released whenever 256 MiB are live -- so
   the buddy allocator, the per-CPU lists, the direct map and the
   accounting all work on every fault, and frees go through them too;
2. **pooled-pmd-model faults per second**: the same loop on the pooled
   design (a 1 GiB CMA area: every 256-page file holds a whole chunk);
3. **pmd-buddy-model faults per second**: the same loop on the third design
   (order-9 buddy chunks, order 0 when no 2 MiB block is free);
4. **peer: the real kernel's memfd_secret first-touch rate**: pages per
   second faulted by one ``memset`` over a fresh 64 MiB secret region (each
   fault allocates a page, removes it from the direct map and flushes the
   kernel TLB), measured in the same rounds.

Figures are medians over rounds; the ratios are medians of per-round ratios
(``benchmarks._measure``).  It also prints how long the page model took for
its ``--faults`` faults, against the one-minute budget of the issue.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque

from benchmarks._measure import Measure, per_round_ratio
from secretvault.api.errors import SecretMemoryUnavailable
from secretvault.backends import MemfdSecretBackend, _sodium
from secretvault.backends.model import (
    DEFAULT_MEMORY,
    Machine,
    PageByPageDesign,
    PmdBuddyDesign,
    PooledPmdDesign,
)
from secretvault.backends.model._machine import SecretFile, SecretmemDesign

MiB = 1 << 20
FILE_PAGES = 256
LIVE_PAGES = 256 * MiB // 4096


def _simulate(design: SecretmemDesign, faults: int) -> float:
    """Seconds for ``faults`` simulated faults (files of 256 pages, bounded live set)."""
    proc = design.machine.spawn(memlock_limit=None)
    live: deque[SecretFile] = deque()
    done = 0
    t0 = time.perf_counter()
    while done < faults:
        if len(live) * FILE_PAGES >= LIVE_PAGES:
            design.release(live.popleft())
        n = min(FILE_PAGES, faults - done)
        f = design.mmap(proc, n)
        for i in range(n):
            design.fault(f, i)
        done += n
        live.append(f)
    elapsed = time.perf_counter() - t0
    while live:
        design.release(live.popleft())
    return elapsed


def _kernel_first_touch(pages: int, seconds: float) -> float:
    """Pages per second faulted by a memset over fresh memfd_secret regions."""
    backend = MemfdSecretBackend()
    done = 0
    spent = 0.0
    try:
        while spent < seconds:
            region = backend.allocate(pages)
            t0 = time.perf_counter()
            _sodium.sodium_memzero(_sodium.pointer(region.address), region.length)
            spent += time.perf_counter() - t0
            done += pages
            backend.free(region)
    finally:
        backend.close()
    return done / spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--faults", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    page = Measure("page-model", "page-model simulated faults", unit="faults/s")
    pooled = Measure("pooled-pmd-model", "pooled-pmd-model simulated faults", unit="faults/s")
    buddy = Measure("pmd-buddy-model", "pmd-buddy-model simulated faults", unit="faults/s")
    kernel = Measure("kernel", "memfd_secret first touch (real kernel)", unit="pages/s")
    page_seconds: list[float] = []
    boot_seconds: list[float] = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        m = Machine(memory_bytes=DEFAULT_MEMORY, seed=args.seed + r)
        boot_seconds.append(time.perf_counter() - t0)
        s = _simulate(PageByPageDesign(m), args.faults)
        page_seconds.append(s)
        page.rounds.append(args.faults / s)
        m = Machine(memory_bytes=DEFAULT_MEMORY, cma_bytes=1024 * MiB, seed=args.seed + r)
        pooled.rounds.append(args.faults / _simulate(PooledPmdDesign(m), args.faults))
        m = Machine(memory_bytes=DEFAULT_MEMORY, seed=args.seed + r)
        buddy.rounds.append(args.faults / _simulate(PmdBuddyDesign(m), args.faults))
        if kernel.missing is None:
            try:
                kernel.rounds.append(_kernel_first_touch(16384, 1.0))
            except SecretMemoryUnavailable as e:
                kernel.missing = str(e)
        print(
            f"round {r + 1}/{args.rounds}: page-model {page.rounds[-1]:,.0f} faults/s, "
            f"pooled {pooled.rounds[-1]:,.0f} faults/s, pmd-buddy {buddy.rounds[-1]:,.0f} faults/s"
            + (f", kernel {kernel.rounds[-1]:,.0f} pages/s" if kernel.rounds else ""),
            file=sys.stderr,
        )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model fault simulation, {args.rounds} rounds (medians)")
    for col in ("figure", "value", "peer", "peer value", "ratio"):
        table.add_column(col, justify="left" if col in ("figure", "peer") else "right")
    peer = kernel.missing or f"{kernel.value:,.0f} pages/s"
    for m_ in (page, pooled, buddy):
        ratio = per_round_ratio(m_, kernel) if kernel.rounds else float("nan")
        table.add_row(m_.label, f"{m_.value:,.0f} faults/s", kernel.label, peer, f"{ratio:.3f}x")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    worst = max(page_seconds)
    mid = sorted(page_seconds)[len(page_seconds) // 2]
    print(
        f"page-model: {args.faults:,} simulated faults in {mid:.1f} s (median; slowest "
        f"round {worst:.1f} s, machine boot {max(boot_seconds):.2f} s) -- "
        f"{'under' if worst < 60 else 'OVER'} the one-minute budget"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
