"""This machine's memory as the kernel reports it, imported into a model.

A simulation that is to predict the kernel's splits on *this* machine has to
start where the machine is: its size, its direct map as booted, the 2 MiB
regions already split, and how its free memory lies by migrate type and
order.  :class:`HostMemory` reads those from ``/proc`` (no root needed);
:func:`host_machine` builds a :class:`Machine` in that state.

What ``/proc`` tells, and what the import assumes where it does not:

* ``MemTotal`` and ``DirectMap4k/2M/1G`` with the split counters give the
  boot layout: every level-2 split moved 2 MiB from ``DirectMap2M`` to
  ``DirectMap4k``, every level-3 split 1 GiB from ``DirectMap1G`` to
  ``DirectMap2M``.  Which regions are split is not readable (no ptdump).
* ``/proc/pagetypeinfo`` gives the free blocks per migrate type and order,
  and the pageblocks per type; ``/proc/zoneinfo`` the memory the buddy
  allocator manages and the pages on the per-CPU lists, which pagetypeinfo
  does not count: with 6.x's auto-tuned ``high`` a 2 GiB free leaves over
  1 GiB there, and the next allocation takes those first.  Memory not
  managed yet (``deferred_init=lazy``: the zone grows on demand, counted
  in ``MemFree`` already) is fresh, whole and movable, and is imported so.
* **Assumption**: the free unmovable pages lie in the regions already split.
  Secret memory is the main source of splits, its pages are unmovable, and
  freed ones go back to the unmovable lists of their own pageblocks.  On a
  machine whose splits were made by secret memory this is exact; the churn
  measurement (``docs/models.md``) is its check.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from secretvault.backends import _procfs
from secretvault.backends.model._directmap import (
    BYTES_1G,
    BYTES_2M,
    PAGE_BYTES,
    PAGES_PER_1G,
    DirectMap,
)
from secretvault.backends.model._machine import Machine
from secretvault.backends.model._physmem import (
    MAX_ORDER,
    MOVABLE,
    PAGEBLOCK_PAGES,
    RECLAIMABLE,
    UNMOVABLE,
    PhysicalMemory,
)
from secretvault.backends.model._workload import QUIET

_TYPES = {"Unmovable": UNMOVABLE, "Movable": MOVABLE, "Reclaimable": RECLAIMABLE}


@dataclass(frozen=True)
class HostMemory:
    """One reading of the machine's memory state."""

    mem_total: int  # bytes
    mem_free: int  # bytes, managed or not
    directmap_4k: int  # bytes now
    directmap_2m: int
    directmap_1g: int
    level2_splits: int
    level3_splits: int
    managed_pages: int
    #: pages on each CPU's lists: free, but not in pagetypeinfo's counts
    #: (auto-tuned ``high``: hundreds of MiB of just-freed pages here), and
    #: usable only by allocations on that CPU until drained
    pcp: tuple[int, ...]
    #: free blocks per migrate type: counts per order 0..MAX_ORDER (order 10 as two 9s)
    free_blocks: tuple[tuple[int, ...], ...]
    pageblocks: tuple[int, ...]  # per migrate type (unmovable, movable, reclaimable)
    #: the CPU the measured process runs on (the probe pins itself): the
    #: model's process takes that CPU's per-CPU list
    cpu: int = 0
    #: whether the per-CPU pages are taken as free unmovable pages (after a
    #: free of secret memory on that CPU they are); the probe clears it after
    #: holding the unmovable pool, which drains its CPU's unmovable list, so
    #: what is left there is other types' (measured: 270,916 such pages
    #: after a hold, none used by the next secret allocation)
    pcp_unmovable: bool = True

    @classmethod
    def read(cls) -> HostMemory:
        info = _procfs.meminfo()
        vm = _procfs.vmstat("direct_map_level2_splits", "direct_map_level3_splits")
        free, blocks = _pagetypes(_procfs.read_text("/proc/pagetypeinfo") or "")
        zoneinfo = _procfs.read_text("/proc/zoneinfo") or ""
        return cls(
            mem_total=info.get("MemTotal", 0),
            mem_free=info.get("MemFree", 0),
            directmap_4k=info.get("DirectMap4k", 0),
            directmap_2m=info.get("DirectMap2M", 0),
            directmap_1g=info.get("DirectMap1G", 0),
            level2_splits=vm.get("direct_map_level2_splits", 0),
            level3_splits=vm.get("direct_map_level3_splits", 0),
            managed_pages=_zoneinfo(zoneinfo)[0],
            pcp=_zoneinfo(zoneinfo)[1],
            free_blocks=free,
            pageblocks=blocks,
        )

    @property
    def boot_layout(self) -> tuple[int, int, int]:
        """``DirectMap4k/2M/1G`` as booted: the splits since, undone."""
        l2, l3 = self.level2_splits * BYTES_2M, self.level3_splits * BYTES_1G
        b4k = max(0, self.directmap_4k - l2)
        b1g = self.directmap_1g + l3
        b2m = max(0, self.directmap_2m + l2 - l3)
        return b4k, b2m, b1g

    def free_blocks_pages(self, mt: int) -> int:
        return sum(n << o for o, n in enumerate(self.free_blocks[mt]))

    @property
    def pcp_pages(self) -> int:
        return sum(self.pcp)

    @property
    def free_pages(self) -> int:
        return sum(n << o for counts in self.free_blocks for o, n in enumerate(counts))


def _pagetypes(text: str) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """Free blocks per (type, order) and pageblocks per type, zones above DMA summed."""
    free = [[0] * (MAX_ORDER + 1) for _ in range(3)]
    blocks = [0, 0, 0]
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 7 or parts[0] != "Node" or parts[3].rstrip(",") == "DMA":
            continue  # ZONE_DMA: kept from ordinary allocations, as in the model
        if parts[4] == "type" and parts[5] in _TYPES:
            mt = _TYPES[parts[5]]
            for order, n in enumerate(int(x) for x in parts[6:]):
                o = min(order, MAX_ORDER)  # the model's largest block is a pageblock
                free[mt][o] += n << (order - o)
        elif parts[4].isdigit():  # pageblocks: unmovable movable reclaimable ...
            for mt, count in zip((UNMOVABLE, MOVABLE, RECLAIMABLE), parts[4:7], strict=True):
                blocks[mt] += int(count)
    return tuple(tuple(f) for f in free), tuple(blocks)


def _zoneinfo(text: str) -> tuple[int, tuple[int, ...]]:
    """Managed pages, and per-CPU list pages by CPU, of the zones above DMA."""
    managed = 0
    pcp: dict[int, int] = {}
    zone = ""
    cpu = -1
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("Node"):
            zone = parts[-1]
        elif zone == "DMA" or len(parts) < 2:
            continue
        elif parts[0] == "managed":
            managed += int(parts[1])
        elif parts[0] == "cpu:":
            cpu = int(parts[1])
        elif parts[0] == "count:" and cpu >= 0:
            pcp[cpu] = pcp.get(cpu, 0) + int(parts[1])
    return managed, tuple(pcp.get(c, 0) for c in range(max(pcp, default=-1) + 1))


def host_machine(host: HostMemory | None = None, *, seed: int = 0,
                 shuffle: bool = False) -> Machine:
    """A quiet :class:`Machine` in ``host``'s state (read now when not given).

    Regions already split (``level2_splits`` of them) are the lowest
    pageblocks above ZONE_DMA, unmovable, holding the free unmovable blocks
    and the per-CPU pages (splits beyond the unmovable pageblocks: movable
    pageblocks in use, holding movable free blocks); the other unmovable and reclaimable pageblocks
    are full but for their own free blocks; whole free pageblocks (and
    memory not managed yet) come next, in-use movable memory with its free
    blocks at the top.  The lowest GiB ranges are split until as many 1 GiB
    entries are left as ``DirectMap1G`` says.
    """
    host = host if host is not None else HostMemory.read()
    b4k, b2m, _ = host.boot_layout
    m = Machine(memory_bytes=host.mem_total, workload=QUIET, seed=seed)
    m.direct_map = dm = DirectMap.from_layout(m.phys.pages, b4k, b2m)
    m.boot_directmap = (dm.bytes_4k, dm.bytes_2m, dm.bytes_1g)
    phys = m.phys
    first = phys.reserved_pages // PAGEBLOCK_PAGES
    free_pb = list(range(first, phys.pageblocks))
    cursor = 0

    def take(n: int, mt: int) -> list[int]:
        nonlocal cursor
        got = free_pb[cursor : cursor + n]
        cursor += len(got)
        for pb in got:
            phys.hold_pageblock(pb, mt)
        return got

    # split regions are unmovable pageblocks first; more splits than unmovable
    # pageblocks (movable memory moved into old regions) are movable ones
    split = take(min(host.level2_splits, host.pageblocks[UNMOVABLE], len(free_pb)), UNMOVABLE)
    unmov = split + take(max(0, host.pageblocks[UNMOVABLE] - len(split)), UNMOVABLE)
    # per-CPU pages are mostly the last ones freed -- secret pages among
    # them -- and lie in runs: imported as 1 MiB runs on their CPU's list
    pcp = host.pcp[: phys.ncpus] if host.pcp_unmovable else ()
    runs = [cpu for cpu, n in enumerate(pcp) for _ in range(n >> 8)]
    _scatter(phys, unmov, host.free_blocks[UNMOVABLE], runs, spread=True)
    _scatter(phys, take(host.pageblocks[RECLAIMABLE], RECLAIMABLE), host.free_blocks[RECLAIMABLE])
    movable = host.free_blocks[MOVABLE]
    whole = movable[MAX_ORDER] + max(0, host.mem_free - host.free_pages * PAGE_BYTES) // (
        PAGEBLOCK_PAGES * PAGE_BYTES
    )
    split_movable = take(max(0, host.level2_splits - len(split)), MOVABLE)
    dm.mark_split(pb * PAGEBLOCK_PAGES for pb in split + split_movable)
    # whole free pageblocks next (boot frees low memory first), in-use movable above
    left = free_pb[cursor:]
    keep_free = min(whole, len(left))
    cursor += keep_free
    # whole free pageblocks that find no unsplit room lie in old regions
    overflow = min(whole - keep_free, len(split_movable))
    for pb in split_movable[:overflow]:
        phys.put_free(pb * PAGEBLOCK_PAGES, MAX_ORDER)
    in_use = split_movable[overflow:] + take(len(left) - keep_free, MOVABLE)
    _scatter(phys, in_use, (*movable[:MAX_ORDER], 0))
    # as many 1 GiB entries as the machine has now.  A GiB range stays whole
    # until a page in it leaves the direct map, whether its memory is free or
    # in use: the ranges left whole are spread evenly over the ranges without
    # split regions, not put where free or used memory lies
    gibs = -(-phys.pages // PAGES_PER_1G)
    whole_1g = [g for g in range(gibs) if not dm.is_split_1g(g * PAGES_PER_1G)]
    keep = min(len(whole_1g), host.directmap_1g // BYTES_1G)
    kept = {whole_1g[(2 * i + 1) * len(whole_1g) // (2 * keep)] for i in range(keep)}
    for g in whole_1g:
        if g not in kept:
            dm.mark_split_1g(g)
    if shuffle:
        # the whole free pageblocks in a random list order, as after frees
        # in no address order (the free lists are LIFO): the other bound on
        # which GiB ranges fresh memory comes from, address order being one
        rng = random.Random(seed)  # noqa: S311 (a simulation, seeded)
        order = left[:keep_free]
        rng.shuffle(order)
        for pb in order:
            phys.hold_pageblock(pb, MOVABLE)
        for pb in order:
            phys.put_free(pb * PAGEBLOCK_PAGES, MAX_ORDER)
    return m


def _scatter(
    phys: PhysicalMemory, pbs: list[int], counts: tuple[int, ...], pcp: list[int] | None = None,
    *, spread: bool = False,
) -> int:
    """Free ``counts[o]`` blocks of each order into the held pageblocks ``pbs``,
    and one order-8 run onto the per-CPU list of each CPU in ``pcp``.

    Held space is carved like a buddy allocator: a free block of order
    ``o`` takes one half of a held block of order ``o + 1`` or more, and its
    buddy stays held, so no two free blocks merge and the machine's
    histogram is kept.  Packed (the default), the blocks fill the pageblocks
    one after the other; ``spread``, each block goes to the next pageblock in
    turn that has room, as the free fragments of unmovable pageblocks lie:
    a few pages in each of many (measured: the 1,432 free unmovable pages
    left after the churn probe's hold lay in about 250 old regions).
    Returns the pages that found no room.
    """
    # one bucket of held blocks per pageblock when spread, one in all when packed
    groups = [[pb] for pb in pbs] if spread else [list(reversed(pbs))]
    buckets: list[list[list[int]]] = []
    for group in groups:
        held: list[list[int]] = [[] for _ in range(MAX_ORDER + 1)]
        held[MAX_ORDER] = [pb * PAGEBLOCK_PAGES for pb in group]
        buckets.append(held)
    dropped = 0
    turn = 0
    runs = list(pcp or ())
    for order in range(MAX_ORDER, -1, -1):
        extra = len(runs) if order == 8 else 0
        for k in range(extra + (counts[order] if order < len(counts) else 0)):
            low = MAX_ORDER if order == MAX_ORDER else order + 1
            found = None
            for step in range(len(buckets)):
                held = buckets[(turn + step) % len(buckets)]
                src = next((o for o in range(low, MAX_ORDER + 1) if held[o]), None)
                if src is not None:
                    found = held, src
                    turn = (turn + step + 1) % len(buckets)
                    break
            if found is None:
                dropped += 1 << order
                continue
            held, src = found
            pfn = held[src].pop()
            if order < MAX_ORDER:
                while src > order + 1:  # keep splitting, upper halves stay held
                    src -= 1
                    held[src].append(pfn + (1 << src))
                held[order].append(pfn + (1 << order))  # the buddy, held
            phys.put_free(pfn, order, runs[k] if k < extra else None)
    return dropped
