"""Simulated physical memory: a buddy allocator with migrate types and CMA.

One zone of 4 KiB pages grouped in 2 MiB pageblocks, modelled on
``mm/page_alloc.c`` (6.x).  What the model keeps, because it decides which
2 MiB region a secret page lands in:

* **migrate types** per pageblock: unmovable, movable, reclaimable and CMA.
  Boot marks every pageblock movable (CMA pageblocks CMA) and frees memory
  low address first, so the first allocations come from the bottom.
* **free lists** per (migrate type, order), head first: a freed block goes to
  the head, an allocation takes the head, and splitting a larger block
  (``expand``) keeps the lowest page and puts the upper halves back at the
  heads, so consecutive order-0 allocations get consecutive frames.
* **per-CPU lists** for order 0: a miss refills ``batch`` pages at once
  (``rmqueue_bulk``); a free goes to the list head, and past ``high`` the
  oldest ``batch`` pages go back to the buddy lists (``free_pcppages_bulk``).
  Recently freed pages are therefore the first reused.
* **fallback** when a type's lists are empty (``__rmqueue_claim`` then
  ``__rmqueue_steal``): search the fallback types (unmovable -> reclaimable,
  movable; movable -> reclaimable, unmovable; reclaimable -> unmovable,
  movable) from the largest order down and *claim* the whole pageblock when
  at least half of it is free or compatible; otherwise take the smallest
  block without changing the pageblock's type.  Unmovable and reclaimable
  allocations never use CMA pageblocks.
* **CMA**: movable allocations may use the CMA area (first when more than
  half of the free memory is CMA, else after their own lists); ``cma_alloc``
  of a 2 MiB chunk migrates the movable pages out of it first
  (``alloc_contig_range``), so the area is shared until it is needed.

Simplifications, stated so nobody mistakes them for kernel facts: one zone,
no watermarks/reclaim/compaction (an allocation that finds nothing fails),
the largest buddy block is a pageblock (order 9; the kernel's order-10
blocks only pair two pageblocks and change nothing about which pageblock a
page lands in), and freed blocks always go to the list head (the kernel
sometimes uses the tail when a higher-order merge looks likely).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

UNMOVABLE = 0
MOVABLE = 1
RECLAIMABLE = 2
CMA = 3
MIGRATE_NAMES = ("unmovable", "movable", "reclaimable", "cma")
PCP_TYPES = 3  # per-CPU lists exist for unmovable, movable, reclaimable

PAGEBLOCK_ORDER = 9
PAGEBLOCK_PAGES = 1 << PAGEBLOCK_ORDER  # 512 pages: 2 MiB
MAX_ORDER = PAGEBLOCK_ORDER

# mm/page_alloc.c ``fallbacks[]``: the order in which other types' free
# lists are searched when a type's own lists are empty.  CMA is nobody's
# fallback: only movable allocations may use it, through their own path.
_FALLBACKS: tuple[tuple[int, ...], ...] = (
    (RECLAIMABLE, MOVABLE),  # unmovable
    (RECLAIMABLE, UNMOVABLE),  # movable
    (UNMOVABLE, MOVABLE),  # reclaimable
)

#: called as ``hook(old_pfn, new_pfn, order)`` when cma_alloc migrates a
#: movable allocation out of the CMA area
MigrationHook = Callable[[int, int, int], None]


class PhysicalMemory:
    """A zone of ``pages`` frames (rounded down to whole pageblocks).

    The CMA area (``cma_pages``, whole pageblocks) sits at the top of the
    zone, where memblock's top-down reservation puts it at boot.  The first
    ``reserved_pages`` are never given to the allocator: firmware, the kernel
    image and the DMA zone, which the kernel uses only as a last resort.
    """

    def __init__(
        self,
        pages: int,
        *,
        cma_pages: int = 0,
        reserved_pages: int = 0,
        ncpus: int = 2,
        pcp_batch: int = 63,
        pcp_high: int = 378,
    ) -> None:
        pages -= pages % PAGEBLOCK_PAGES
        cma_pages -= cma_pages % PAGEBLOCK_PAGES
        if pages <= 0:
            raise ValueError("physical memory needs at least one 2 MiB pageblock")
        reserved_pages = -(-reserved_pages // PAGEBLOCK_PAGES) * PAGEBLOCK_PAGES
        if not 0 <= cma_pages < pages - reserved_pages:
            raise ValueError("the CMA area must be smaller than the memory left to the allocator")
        self.pages = pages
        self.pageblocks = pages // PAGEBLOCK_PAGES
        self.cma_start = pages - cma_pages
        self.cma_pages = cma_pages
        self.reserved_pages = reserved_pages
        self.pcp_batch = pcp_batch
        self.pcp_high = pcp_high
        # order + 1 at the head frame of each free buddy block, else 0
        self._free = bytearray(pages)
        self._pb_type = bytearray(self.pageblocks)
        self._pb_free = [0] * self.pageblocks  # buddy-free pages per pageblock
        self._pb_movable = [0] * self.pageblocks  # pages held by movable allocations
        # free lists: dicts used as ordered sets; the *last* key is the head
        self._lists: list[list[dict[int, None]]] = [
            [{} for _ in range(MAX_ORDER + 1)] for _ in MIGRATE_NAMES
        ]
        self.nr_free = [0] * len(MIGRATE_NAMES)  # buddy-free pages per list type
        self._pcp: list[list[deque[int]]] = [
            [deque() for _ in range(PCP_TYPES)] for _ in range(ncpus)
        ]
        # CMA bookkeeping: chunk bitmap, and the movable allocations living in
        # CMA pageblocks (by pageblock) so cma_alloc can migrate them
        self._cma_used = bytearray(cma_pages // PAGEBLOCK_PAGES)
        self._cma_movable: dict[int, dict[int, int]] = {}
        self.migration_hook: MigrationHook | None = None
        self.cma_migrations = 0
        self.cma_failures = 0

        first_free = reserved_pages // PAGEBLOCK_PAGES
        for pb in range(self.pageblocks):
            if pb < first_free:
                self._pb_type[pb] = UNMOVABLE  # firmware, kernel image: never freed
            else:
                self._pb_type[pb] = CMA if pb * PAGEBLOCK_PAGES >= self.cma_start else MOVABLE
        # Boot frees memory to the list tails, low addresses first, so the
        # head of each list is the lowest block: insert high to low.
        for pb in range(self.pageblocks - 1, first_free - 1, -1):
            self._add_free(pb * PAGEBLOCK_PAGES, MAX_ORDER, self._pb_type[pb])

    # --- free-list primitives ------------------------------------------------

    def _add_free(self, pfn: int, order: int, mt: int) -> None:
        self._lists[mt][order][pfn] = None
        self._free[pfn] = order + 1
        n = 1 << order
        self._pb_free[pfn >> PAGEBLOCK_ORDER] += n
        self.nr_free[mt] += n

    def _del_free(self, pfn: int, order: int, mt: int) -> None:
        del self._lists[mt][order][pfn]
        self._free[pfn] = 0
        n = 1 << order
        self._pb_free[pfn >> PAGEBLOCK_ORDER] -= n
        self.nr_free[mt] -= n

    def _take(self, order: int, cur: int, mt: int, list_mt: int) -> int:
        """Pop the head block of ``list_mt``/``cur`` and split it to ``order``.

        ``expand()``: the lowest part is returned, the upper halves go back to
        the heads of the lists of the block's own type.
        """
        pfn, _ = self._lists[list_mt][cur].popitem()
        self._free[pfn] = 0
        n = 1 << cur
        self._pb_free[pfn >> PAGEBLOCK_ORDER] -= n
        self.nr_free[list_mt] -= n
        while cur > order:
            cur -= 1
            self._add_free(pfn + (1 << cur), cur, list_mt)
        return pfn

    def _smallest(self, order: int, mt: int) -> int:
        lists = self._lists[mt]
        for cur in range(order, MAX_ORDER + 1):
            if lists[cur]:
                return self._take(order, cur, mt, mt)
        return -1

    def _set_block_type(self, pb: int, mt: int) -> None:
        """Change a pageblock's type, moving its free blocks to the new lists."""
        old = self._pb_type[pb]
        if old == mt:
            return
        pfn = pb * PAGEBLOCK_PAGES
        end = pfn + PAGEBLOCK_PAGES
        free = self._free
        while pfn < end:
            o = free[pfn]
            if o:
                order = o - 1
                del self._lists[old][order][pfn]
                self._lists[mt][order][pfn] = None
                self.nr_free[old] -= 1 << order
                self.nr_free[mt] += 1 << order
                pfn += 1 << order
            else:
                pfn += 1
        self._pb_type[pb] = mt

    def _claim(self, order: int, mt: int) -> int:
        """``__rmqueue_claim``: take over a whole pageblock of another type."""
        fallbacks = _FALLBACKS[mt]
        for cur in range(MAX_ORDER, order - 1, -1):
            # should_try_claim_block(): movable allocations claim only from
            # half a pageblock up ("movable pages won't cause permanent
            # fragmentation, so steal less"); the others always try.
            if mt == MOVABLE and cur < PAGEBLOCK_ORDER // 2:
                break
            for fb in fallbacks:
                fl = self._lists[fb][cur]
                if not fl:
                    continue
                pfn = next(reversed(fl))  # the list head
                pb = pfn >> PAGEBLOCK_ORDER
                if cur < PAGEBLOCK_ORDER:
                    # try_to_claim_block(): claim when free + "alike" pages
                    # make up at least half the pageblock
                    free = self._pb_free[pb]
                    movable = self._pb_movable[pb]
                    if mt == MOVABLE:
                        alike = movable
                    elif fb == MOVABLE:
                        alike = PAGEBLOCK_PAGES - free - movable
                    else:
                        alike = 0
                    if free + alike < PAGEBLOCK_PAGES // 2:
                        break  # only the first suitable fallback is tried per order
                self._set_block_type(pb, mt)
                return self._smallest(order, mt)
        return -1

    def _steal(self, order: int, mt: int) -> int:
        """``__rmqueue_steal``: the smallest fallback block, type unchanged."""
        for cur in range(order, MAX_ORDER + 1):
            for fb in _FALLBACKS[mt]:
                if self._lists[fb][cur]:
                    return self._take(order, cur, fb, fb)
        return -1

    def _rmqueue(self, order: int, mt: int) -> int:
        if mt == MOVABLE and self.cma_pages:
            # Balance movable allocations between regular and CMA areas:
            # CMA first when it holds more than half of the free memory.
            if self.nr_free[CMA] * 2 > sum(self.nr_free):
                pfn = self._smallest(order, CMA)
                if pfn >= 0:
                    return pfn
            pfn = self._smallest(order, MOVABLE)
            if pfn < 0:
                pfn = self._smallest(order, CMA)
        else:
            pfn = self._smallest(order, mt)
        if pfn < 0:
            pfn = self._claim(order, mt)
        if pfn < 0:
            pfn = self._steal(order, mt)
        return pfn

    def _free_one(self, pfn: int, order: int) -> None:
        """``__free_one_page``: merge with free buddies, add at the list head."""
        mt = self._pb_type[pfn >> PAGEBLOCK_ORDER]
        free = self._free
        while order < MAX_ORDER:
            buddy = pfn ^ (1 << order)
            if free[buddy] != order + 1:
                break
            # buddies below pageblock order share the pageblock, hence the type
            self._del_free(buddy, order, mt)
            pfn &= buddy
            order += 1
        self._add_free(pfn, order, mt)

    # --- allocation API --------------------------------------------------------

    def alloc(self, order: int, mt: int, cpu: int = 0) -> int:
        """Allocate ``2**order`` frames of type ``mt``; the first pfn, or -1."""
        if order == 0:
            pcp = self._pcp[cpu][mt]
            if not pcp:
                # rmqueue_bulk(): refill the per-CPU list in one go
                for _ in range(self.pcp_batch):
                    p = self._rmqueue(0, mt)
                    if p < 0:
                        break
                    pcp.append(p)
                if not pcp:
                    return -1
            pfn = pcp.popleft()
        else:
            pfn = self._rmqueue(order, mt)
            if pfn < 0:
                return -1
        if mt == MOVABLE:
            self._pb_movable[pfn >> PAGEBLOCK_ORDER] += 1 << order
            if pfn >= self.cma_start:
                pb = pfn >> PAGEBLOCK_ORDER
                self._cma_movable.setdefault(pb, {})[pfn] = order
        return pfn

    def free(self, pfn: int, order: int, mt: int, cpu: int = 0) -> None:
        """Give back an allocation made with ``alloc(order, mt)``."""
        if mt == MOVABLE:
            pb = pfn >> PAGEBLOCK_ORDER
            self._pb_movable[pb] -= 1 << order
            if pfn >= self.cma_start:
                users = self._cma_movable[pb]
                del users[pfn]
                if not users:
                    del self._cma_movable[pb]
        if order == 0 and pfn < self.cma_start:
            # to the head of the per-CPU list of the page's pageblock type
            pcp = self._pcp[cpu][self._pb_type[pfn >> PAGEBLOCK_ORDER]]
            pcp.appendleft(pfn)
            if len(pcp) > self.pcp_high:
                for _ in range(min(self.pcp_batch, len(pcp))):
                    self._free_one(pcp.pop(), 0)  # the oldest, from the tail
            return
        # CMA pages skip the per-CPU lists here, so a chunk being isolated
        # never has stragglers on them (the kernel drains them instead)
        self._free_one(pfn, order)

    def drain_pcp(self) -> None:
        """``drain_all_pages``: every per-CPU page back to the buddy lists."""
        for lists in self._pcp:
            for pcp in lists:
                while pcp:
                    self._free_one(pcp.pop(), 0)

    # --- CMA -------------------------------------------------------------------

    @property
    def cma_chunks(self) -> int:
        return len(self._cma_used)

    @property
    def cma_chunks_free(self) -> int:
        return self._cma_used.count(0)

    def cma_alloc(self) -> int:
        """One 2 MiB chunk of the CMA area (first fit), or -1 when drained.

        ``alloc_contig_range``: movable allocations inside the chunk are
        migrated out (to non-CMA memory); when that fails the next free chunk
        is tried, as cma_alloc does on -EBUSY.
        """
        for chunk, used in enumerate(self._cma_used):
            if used:
                continue
            start = self.cma_start + chunk * PAGEBLOCK_PAGES
            if self._isolate(start):
                self._cma_used[chunk] = 1
                return start
        self.cma_failures += 1
        return -1

    def _isolate(self, start: int) -> bool:
        pb = start >> PAGEBLOCK_ORDER
        users = self._cma_movable.get(pb)
        if users:
            hook = self.migration_hook
            if hook is None:
                return False
            for old, order in sorted(users.items()):
                new = self._rmqueue_nocma(order)
                if new < 0:
                    return False
                self._pb_movable[new >> PAGEBLOCK_ORDER] += 1 << order
                hook(old, new, order)
                self.free(old, order, MOVABLE)
                self.cma_migrations += 1
        if self._free[start] != MAX_ORDER + 1:
            # pages of the chunk may sit on per-CPU lists (movable refills
            # take CMA pages): drain them, as alloc_contig_range does
            self.drain_pcp()
        if self._free[start] != MAX_ORDER + 1:
            return False
        self._del_free(start, MAX_ORDER, CMA)
        return True

    def _rmqueue_nocma(self, order: int) -> int:
        """A migration target: movable memory outside the CMA area."""
        pfn = self._smallest(order, MOVABLE)
        if pfn < 0:
            pfn = self._claim(order, MOVABLE)
        if pfn < 0:
            pfn = self._steal(order, MOVABLE)
        return pfn

    def cma_release(self, pfn: int) -> None:
        chunk = (pfn - self.cma_start) // PAGEBLOCK_PAGES
        if pfn < self.cma_start or not self._cma_used[chunk]:
            raise ValueError(f"pfn {pfn} is not an allocated CMA chunk")
        self._cma_used[chunk] = 0
        self._free_one(pfn, MAX_ORDER)

    # --- a machine's state, imported (``_host``) ----------------------------------

    def hold_pageblock(self, pb: int, mt: int) -> None:
        """Take free pageblock ``pb`` out of the lists whole, held as type ``mt``."""
        self._del_free(pb * PAGEBLOCK_PAGES, MAX_ORDER, self._pb_type[pb])
        self._pb_type[pb] = mt
        self._pb_movable[pb] = PAGEBLOCK_PAGES if mt == MOVABLE else 0

    def put_free(self, pfn: int, order: int, cpu: int | None = None) -> None:
        """Free a block of a held pageblock, unmerged: to the list head, or page
        by page to ``cpu``'s per-CPU list."""
        pb = pfn >> PAGEBLOCK_ORDER
        if self._pb_type[pb] == MOVABLE:
            self._pb_movable[pb] -= 1 << order
        if cpu is None:
            self._add_free(pfn, order, self._pb_type[pb])
        else:
            self._pcp[cpu][self._pb_type[pb]].extend(range(pfn, pfn + (1 << order)))

    # --- inspection --------------------------------------------------------------

    @property
    def ncpus(self) -> int:
        return len(self._pcp)

    def pageblock_type(self, pfn: int) -> int:
        return self._pb_type[pfn >> PAGEBLOCK_ORDER]

    def pageblocks_by_type(self) -> tuple[int, ...]:
        counts = [0] * len(MIGRATE_NAMES)
        for t in self._pb_type:
            counts[t] += 1
        return tuple(counts)

    def pcp_pages(self) -> int:
        return sum(len(pcp) for lists in self._pcp for pcp in lists)

    def free_pages(self) -> int:
        """Free frames: on the buddy lists plus on the per-CPU lists."""
        return sum(self.nr_free) + self.pcp_pages()

    def is_free(self, pfn: int) -> bool:
        """Whether ``pfn`` lies in a free buddy block (per-CPU pages excluded)."""
        for order in range(MAX_ORDER + 1):
            head = pfn & ~((1 << order) - 1)
            if self._free[head] == order + 1:
                return True
        return False

    def free_2m_blocks(self, *, cma: bool = False) -> int:
        """Free aligned 2 MiB blocks on the buddy lists, in 2 MiB units.

        ``/proc/buddyinfo``'s order-9 column and up; those of the CMA area
        only with ``cma`` (an unmovable allocation cannot use them).
        """
        types = range(len(MIGRATE_NAMES)) if cma else (UNMOVABLE, MOVABLE, RECLAIMABLE)
        return sum(
            len(self._lists[mt][order]) << (order - PAGEBLOCK_ORDER)
            for mt in types
            for order in range(PAGEBLOCK_ORDER, MAX_ORDER + 1)
        )
