"""Secret memory itself: slot allocation rate, first-touch cost, pages per key.

``python -m benchmarks.bench_memory [--rounds N] [--keys N]`` prints three
figures, each beside its peer measured in the same run:

1. **Slots allocated per second**: 64-byte slots from a fresh
   ``SlotAllocator(MemfdSecretBackend())``, region creation included (the
   slots are not written: that is figure 2).  Peer: the same allocator over
   locked anonymous memory (mmap + mlock + MADV_DONTDUMP/DONTFORK, what the
   model backends use), so the ratio is the price of memfd_secret's
   per-region syscalls (memfd_secret, ftruncate, mmap, madvise, close).
2. **First-touch cost per page**: one ``memset`` over a fresh region faults
   every page in.  A secret page's first touch allocates a zeroed page,
   *removes it from the kernel's direct map* and flushes the kernel TLB for
   it; an anonymous page only allocates and zeroes.  Peer: private anonymous
   memory with transparent huge pages off (MADV_NOHUGEPAGE), so both sides
   fault 4 KiB at a time.  Both include writing the 4 KiB; the warm rewrite
   of the same pages is printed for scale.
3. **Secret pages per 100,000 Ed25519 keys**: 100,000 64-byte slots, each
   filled with ``randombytes_buf`` (so its page is faulted), against the
   ideal 100,000 x 64 / 4096 = 1562.5 pages.  Both *pages mapped* (what
   RLIMIT_MEMLOCK is charged, at mmap time) and *pages resident* (faulted,
   out of the direct map) are reported, with the distinct 2 MiB physical
   regions they landed in (root only) and the level-2 split delta.

Figures are medians over rounds; ratios are medians of per-round ratios
(``benchmarks._measure``), so load from other work on this 2-core machine
hits both sides of a round alike.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import sys
import time
from collections.abc import Callable

from benchmarks._measure import Measure, median, per_round_ratio
from secretvault.api.errors import SecretMemoryUnavailable
from secretvault.backends import MemfdSecretBackend, SlotAllocator, _sodium, _sys
from secretvault.backends._base import (
    BackendStats,
    DirectMapStats,
    Protection,
    Region,
    SecretMemoryBackend,
)

PAGE = _sys.PAGE_SIZE
ED25519_SLOT = 64


class _LockedAnonymous:
    """The peer backend: locked anonymous memory, not secret (no direct-map removal)."""

    def __init__(self) -> None:
        self._regions: dict[int, Region] = {}

    @property
    def name(self) -> str:
        return "locked-anonymous"

    @property
    def protection(self) -> Protection:
        return "model"

    def allocate(self, pages: int) -> Region:
        region = Region(_sys.mmap_anonymous_locked(pages * PAGE), pages)
        self._regions[region.address] = region
        return region

    def touch(self, address: int) -> None:
        """mlock already faulted every page in."""

    def free(self, region: Region) -> None:
        del self._regions[region.address]
        _sys.munmap(region.address, region.length)

    def statistics(self) -> BackendStats:
        return BackendStats(
            backend=self.name,
            protection=self.protection,
            regions=len(self._regions),
            pages_mapped=sum(r.pages for r in self._regions.values()),
            pages_resident=sum(r.pages for r in self._regions.values()),  # mlocked
            hibernation_inhibited=False,
            direct_map=DirectMapStats("model", 0, 0, 0, 0, 0, 0, 0, 0, None, None),
        )

    def close(self) -> None:
        for r in list(self._regions.values()):
            self.free(r)


# --- 1. slots per second ------------------------------------------------------------


def slots_per_second(make_backend: Callable[[], SecretMemoryBackend], n: int) -> float:
    alloc = SlotAllocator(make_backend())
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            alloc.allocate(ED25519_SLOT)
        return n / (time.perf_counter() - t0)
    finally:
        alloc.close()


# --- 2. first touch -----------------------------------------------------------------


def _memset_ns_per_page(address: int, pages: int) -> float:
    t0 = time.perf_counter_ns()
    ctypes.memset(address, 0x5A, pages * PAGE)
    return (time.perf_counter_ns() - t0) / pages


def touch_secret(pages: int) -> tuple[float, float]:
    """(first touch, warm rewrite) ns per page of a fresh memfd_secret region."""
    addr = _sys.create_secret_region(pages * PAGE)
    try:
        first = _memset_ns_per_page(addr, pages)
        warm = _memset_ns_per_page(addr, pages)
    finally:
        _sys.munmap(addr, pages * PAGE)
    return first, warm


def touch_anonymous(pages: int) -> tuple[float, float]:
    """(first touch, warm rewrite) ns per page of fresh private anonymous memory."""
    m = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        # 4 KiB faults, like secretmem (which has no huge pages)
        m.madvise(mmap.MADV_NOHUGEPAGE)
        view = (ctypes.c_char * (pages * PAGE)).from_buffer(m)
        try:
            addr = ctypes.addressof(view)
            first = _memset_ns_per_page(addr, pages)
            warm = _memset_ns_per_page(addr, pages)
        finally:
            del view  # release the buffer export so the map can close
    finally:
        m.close()
    return first, warm


# --- 3. pages per 100,000 keys ---------------------------------------------------------


def pages_for_keys(keys: int) -> dict[str, float | int | None]:
    alloc = SlotAllocator(MemfdSecretBackend())
    try:
        t0 = time.perf_counter()
        slots = [alloc.allocate(ED25519_SLOT) for _ in range(keys)]
        seconds = time.perf_counter() - t0
        for s in slots:
            _sodium.randombytes_buf(s.ptr, ED25519_SLOT)
        st = alloc.statistics()
        return {
            "keys": keys,
            "alloc_per_s": keys / seconds,
            "regions": st.regions,
            "pages_mapped": st.pages_mapped,
            "pages_resident": st.pages_resident,
            "distinct_2m": st.direct_map.distinct_2m_regions,
            "level2_splits": st.direct_map.level2_splits,
        }
    finally:
        alloc.close()


# --- report ---------------------------------------------------------------------------------


def _line(label: str, figure: str, peer: str = "", ratio: str = "") -> None:
    print(f"{label:<44} {figure:>16} {peer:>24} {ratio:>10}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--slots", type=int, default=20_000, help="slots per allocation round")
    p.add_argument("--touch-pages", type=int, default=1024, help="pages per first-touch round")
    p.add_argument("--keys", type=int, default=100_000)
    args = p.parse_args(argv)
    try:
        MemfdSecretBackend().close()
    except SecretMemoryUnavailable as e:
        print(f"bench_memory: needs memfd_secret(2): {e}", file=sys.stderr)
        return 2

    alloc_secret = Measure("slots_secret", "slots/s, memfd_secret")
    alloc_anon = Measure("slots_anon", "slots/s, locked anonymous")
    touch_s = Measure("touch_secret", "first touch, memfd_secret", unit="ns/page")
    touch_a = Measure("touch_anon", "first touch, anonymous", unit="ns/page")
    warm_s: list[float] = []
    warm_a: list[float] = []
    for r in range(args.rounds):
        # alternate which side goes first, so neither always runs on a warmer cache
        sides: list[tuple[Measure, Callable[[], SecretMemoryBackend]]] = [
            (alloc_secret, MemfdSecretBackend),
            (alloc_anon, _LockedAnonymous),
        ]
        for m, make in sides if r % 2 == 0 else sides[::-1]:
            m.rounds.append(slots_per_second(make, args.slots))
        touches = [(touch_s, warm_s, touch_secret), (touch_a, warm_a, touch_anonymous)]
        for m, warm, fn in touches if r % 2 == 0 else touches[::-1]:
            first, again = fn(args.touch_pages)
            m.rounds.append(first)
            warm.append(again)
    keys = pages_for_keys(args.keys)

    print(f"bench_memory: {args.rounds} rounds, medians; page {PAGE} B")
    _line("figure", "value", "peer", "ratio")
    _line(
        f"slot allocation ({args.slots} x 64 B, fresh allocator)",
        f"{alloc_secret.value:,.0f}/s",
        f"{alloc_anon.value:,.0f}/s anon",
        f"{per_round_ratio(alloc_secret, alloc_anon):.2f}x",
    )
    _line(
        f"first touch per page ({args.touch_pages} pages)",
        f"{touch_s.value:,.0f} ns",
        f"{touch_a.value:,.0f} ns anon",
        f"{per_round_ratio(touch_s, touch_a):.2f}x",
    )
    _line(
        "  warm rewrite per page (for scale)",
        f"{median(warm_s):,.0f} ns",
        f"{median(warm_a):,.0f} ns anon",
        f"{median(warm_s) / median(warm_a):.2f}x",
    )
    ideal = args.keys * ED25519_SLOT / PAGE
    per_100k = 100_000 / args.keys
    mapped, resident = int(keys["pages_mapped"] or 0), int(keys["pages_resident"] or 0)
    print()
    print(
        f"secret pages per 100,000 Ed25519 keys (64 B slots, {args.keys:,} keys written, "
        f"{keys['regions']} regions, allocated at {keys['alloc_per_s']:,.0f}/s)"
    )
    _line("  ideal (keys x 64 / 4096)", f"{ideal * per_100k:,.1f}")
    _line(
        "  pages mapped (memlock charged)",
        f"{mapped * per_100k:,.1f}",
        "",
        f"{mapped / ideal:.3f}x",
    )
    _line(
        "  pages resident (faulted, off the direct map)",
        f"{resident * per_100k:,.1f}",
        "",
        f"{resident / ideal:.3f}x",
    )
    d2m = keys["distinct_2m"]
    _line(
        "  distinct 2 MiB physical regions",
        "root only" if d2m is None else f"{d2m}",
        f"ideal {-(-resident // 512)}",
    )
    _line("  direct_map_level2_splits delta (kernel-wide)", f"{keys['level2_splits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
