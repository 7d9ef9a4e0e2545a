"""The pooled-PMD design: v16 of "secretmem: use PMD-size pages to amortize
direct map fragmentation" (the design the review turned down).

* A CMA area of fixed size is reserved at boot (``secretmem=SIZE``); until
  a chunk is taken, movable allocations may use it.
* Each file has its own pool.  When it is empty, a fault takes a 2 MiB
  chunk from CMA (``cma_alloc``, migrating movable pages out), charges it to
  the memcg *whole* (``memcg_kmem_charge_page`` at PMD order), removes it
  from the direct map as one aligned 2 MiB page -- the 1 GiB entry above it
  splits, the 2 MiB entry does not -- and carves it into 4 KiB pages.
* Pages freed stay in the file's pool; the chunks go back to CMA, and back
  into the direct map whole, only when the file goes.
* No CMA chunk left: the fault fails (a typed :class:`PoolExhausted` here;
  OOM/SIGBUS in the kernel).  v16 had no fallback; the order-0 fallback
  proposed in review (Mike Rapoport: "PMD_ORDER allocations for the pool
  with a fallback to order 0") is the ``fallback`` option: a page-by-page
  allocation, with its own direct-map split and per-page charge.
* The mlock rlimit is charged at mmap as in every version (``_machine``).
"""

from __future__ import annotations

from secretvault.api.errors import PoolExhausted, SecretMemoryExhausted
from secretvault.backends.model._backend import ModelBackend
from secretvault.backends.model._directmap import BYTES_2M, PAGE_BYTES, PAGES_PER_2M
from secretvault.backends.model._machine import (
    DEFAULT_CMA,
    Machine,
    ModelProcess,
    SecretFile,
    SecretmemDesign,
)
from secretvault.backends.model._physmem import UNMOVABLE


class PooledPmdDesign(SecretmemDesign):
    """Per-file pools of 2 MiB CMA chunks, memcg charged per chunk."""

    name = "pooled-pmd-model"

    def __init__(self, machine: Machine, *, fallback: bool = False) -> None:
        super().__init__(machine)
        self.fallback = fallback
        self.chunks_held = 0
        self.fallback_pages = 0  # order-0 fallback pages now held
        self.fallback_faults = 0  # ... ever taken

    def _get_page(self, f: SecretFile) -> int:
        if f.pool:
            return f.pool.pop()
        m = self.machine
        chunk = m.phys.cma_alloc()
        if chunk >= 0:
            # secretmem_pool_increase()
            self._charge(f, BYTES_2M)
            m.direct_map.invalidate_2m(chunk)
            f.chunks.append(chunk)
            self.chunks_held += 1
            # gen_pool hands out the lowest free address first
            f.pool.extend(range(chunk + PAGES_PER_2M - 1, chunk, -1))
            return chunk
        if not self.fallback:
            self.failures += 1
            total = m.phys.cma_chunks
            busy = m.phys.cma_chunks_free
            raise PoolExhausted(
                f"pooled-PMD model: the CMA area is drained: {self.chunks_held} of its "
                f"{total} chunks of 2 MiB ({total * 2} MiB) are held by {self.files_open} "
                f"open files, {self.pool_waste_pages() * PAGE_BYTES // (1 << 20)} MiB of "
                "them unused"
                + (f"; {busy} more could not be cleared of movable pages" if busy else "")
                + "; the order-0 fallback is off"
            )
        pfn = m.phys.alloc(0, UNMOVABLE, f.process.cpu)
        if pfn < 0:
            self.failures += 1
            raise SecretMemoryExhausted(
                "pooled-PMD model: CMA drained and no order-0 page for the fallback "
                f"({m.phys.free_pages()} of {m.phys.pages} frames free)"
            )
        m.direct_map.invalidate_page(pfn)
        self._charge(f, PAGE_BYTES)
        f.fallback.add(pfn)
        self.fallback_pages += 1
        self.fallback_faults += 1
        return pfn

    def _put_pages(self, f: SecretFile) -> None:
        m = self.machine
        for pfn in sorted(f.fallback):
            m.direct_map.restore_page(pfn)
            m.phys.free(pfn, 0, UNMOVABLE, f.process.cpu)
        self._uncharge(f, len(f.fallback) * PAGE_BYTES)
        self.fallback_pages -= len(f.fallback)
        f.fallback.clear()
        for chunk in f.chunks:
            # the chunk goes back whole: restored as one 2 MiB entry
            m.direct_map.restore_2m(chunk)
            m.phys.cma_release(chunk)
            self._uncharge(f, BYTES_2M)
        self.chunks_held -= len(f.chunks)
        f.chunks.clear()
        f.pool.clear()

    def pool_waste_pages(self) -> int:
        in_chunks = self.pages_in_use - self.fallback_pages
        return self.chunks_held * PAGES_PER_2M - in_chunks

    def extra(self) -> tuple[tuple[str, float], ...]:
        phys = self.machine.phys
        return (
            *super().extra(),
            ("cma_bytes", float(phys.cma_pages * PAGE_BYTES)),
            ("cma_free_bytes", float(phys.cma_chunks_free * BYTES_2M)),
            ("pool_chunks", float(self.chunks_held)),
            ("fallback_pages", float(self.fallback_pages)),
            ("fallback", 1.0 if self.fallback else 0.0),
        )


class PooledPmdModelBackend(ModelBackend):
    """The ``pooled-pmd-model`` backend: the v16 design, simulated."""

    def __init__(
        self,
        machine: Machine | None = None,
        *,
        fallback: bool = False,
        process: ModelProcess | None = None,
        fault_on_allocate: bool = True,
    ) -> None:
        super().__init__(
            PooledPmdDesign(
                machine if machine is not None else Machine(cma_bytes=DEFAULT_CMA),
                fallback=fallback,
            ),
            process=process,
            fault_on_allocate=fault_on_allocate,
        )
