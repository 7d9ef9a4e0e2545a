"""The PMD-buddy design: plain PMD-order buddy allocations, no CMA, order-0
fallback -- Mike Rapoport's "more restrictive possibility" in the v16 review
(``shared/seed/``): "use plain PMD_ORDER allocations to fill the pool,
without relying on CMA".

* The pool is v16's (:class:`~secretvault.backends.model._pooled.PooledPmdDesign`):
  per file, 2 MiB chunks charged to the memcg whole, removed from the direct
  map whole (no level-2 split), freed pages kept in the file's pool, chunks
  given back whole when the file goes.
* A chunk is an order-9 *unmovable* allocation from the buddy allocator
  (``alloc_pages(GFP_HIGHUSER, PMD_ORDER)``): a free 2 MiB block of the
  unmovable lists, else one claimed from the reclaimable or movable lists
  (the pageblock becomes unmovable and stays so after the chunk is freed).
  No global secretmem pool exists to exhaust, but each chunk removes one
  free 2 MiB block from the machine -- the thread's "possible to drain high
  order free blocks in a system".
* No free 2 MiB block: the fault falls back to one order-0 unmovable page,
  as page-by-page does (its own direct-map split, charged per page).  The
  kernel would first try compaction for an order-9 request; the model has
  none (``_physmem``), so it falls back sooner than a kernel could.

What a chunk costs therefore depends on how many free 2 MiB blocks the
machine still has: :attr:`PmdBuddyDesign.free_2m_series` records that count
(outside CMA) at every chunk request whose answer changed it, and
``extra()`` gives the figure now, the lowest seen and the fallbacks taken.
"""

from __future__ import annotations

from secretvault.backends.model._machine import Machine, SecretFile
from secretvault.backends.model._physmem import PAGEBLOCK_ORDER, UNMOVABLE
from secretvault.backends.model._pooled import PooledPmdDesign


class PmdBuddyDesign(PooledPmdDesign):
    """Per-file pools of order-9 buddy blocks, order-0 fallback when none is free."""

    name = "pmd-buddy-model"
    chunk_source = "the buddy allocator (no free 2 MiB block)"

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine, fallback=True)
        self.chunk_requests = 0
        self.chunk_misses = 0  # requests that found no free 2 MiB block
        free = machine.phys.free_2m_blocks()
        self.min_free_2m = free
        #: (secret faults so far, free 2 MiB blocks outside CMA), on change
        self.free_2m_series: list[tuple[int, int]] = [(0, free)]

    def _chunk_alloc(self, f: SecretFile) -> int:
        phys = self.machine.phys
        self.chunk_requests += 1
        chunk = phys.alloc(PAGEBLOCK_ORDER, UNMOVABLE, f.process.cpu)
        if chunk < 0:
            self.chunk_misses += 1
        self._note_free_2m()
        return chunk

    def _chunk_free(self, f: SecretFile, chunk: int) -> None:
        self.machine.phys.free(chunk, PAGEBLOCK_ORDER, UNMOVABLE, f.process.cpu)

    def _note_free_2m(self) -> None:
        free = self.machine.phys.free_2m_blocks()
        if free < self.min_free_2m:
            self.min_free_2m = free
        if self.free_2m_series[-1][1] != free:
            self.free_2m_series.append((self.faults, free))

    def _drained(self) -> str:
        return f"no free 2 MiB block: {self.chunks_held} chunks held by {self.files_open} files"

    def extra(self) -> tuple[tuple[str, float], ...]:
        return (
            *super().extra(),
            ("free_2m_blocks", float(self.machine.phys.free_2m_blocks())),
            ("min_free_2m_blocks", float(self.min_free_2m)),
            ("chunk_requests", float(self.chunk_requests)),
            ("chunk_misses", float(self.chunk_misses)),
            ("fallback_faults", float(self.fallback_faults)),
        )
