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
* No CMA chunk left: v16 had no fallback.  ``secretmem_alloc_page`` returned
  NULL and ``secretmem_fault`` returned ``VM_FAULT_OOM`` -- not an error the
  process could see.  On the x86 fault path a user-mode ``VM_FAULT_OOM``
  goes to ``pagefault_out_of_memory()``, which in the kernels v16 was
  written for (5.11) called the global OOM killer; the faulting instruction
  is retried until the pool can grow or the faulting process is dead.  The
  model kills the faulting process (:class:`OomKilled`): its secret files
  are released as its exit would, its chunks go back to CMA.  (The kernel's
  OOM killer picks the task of highest badness, so a larger innocent task
  may die first; since 5.16 the fault path no longer calls the OOM killer
  and just retries the fault, a livelock until a signal ends the process;
  a fault taken inside a syscall -- ``read(2)`` into the buffer -- gets
  EFAULT instead.)
* ``kill_on_oom=False`` is the variant the ``pooled-pmd-model`` *backend*
  uses: it cannot kill the vault that runs on it, so the same fault raises
  :class:`PoolExhausted`, whose message says what v16 did.
* ``fallback=True`` is the order-0 fallback proposed in review (Mike
  Rapoport: "PMD_ORDER allocations for the pool with a fallback to order
  0"): a page-by-page allocation, with its own direct-map split and
  per-page charge.  It was never in v16.
* The mlock rlimit is charged at mmap as in every version (``_machine``).

Where the chunks come from and go back to is all a subclass changes
(``_chunk_alloc``, ``_chunk_free``): ``_pmdbuddy.py`` takes them from the
buddy allocator instead of CMA.
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


class OomKilled(PoolExhausted):
    """``VM_FAULT_OOM`` from a secret page fault: the OOM path killed the process."""


class PooledPmdDesign(SecretmemDesign):
    """Per-file pools of 2 MiB CMA chunks, memcg charged per chunk."""

    name = "pooled-pmd-model"
    #: where the chunks come from, for messages
    chunk_source = "the CMA area"

    def __init__(
        self, machine: Machine, *, fallback: bool = False, kill_on_oom: bool = True
    ) -> None:
        super().__init__(machine)
        self.fallback = fallback
        self.kill_on_oom = kill_on_oom
        self.chunks_held = 0
        self.fallback_pages = 0  # order-0 fallback pages now held
        self.fallback_faults = 0  # ... ever taken
        self.oom_kills = 0  # processes killed on VM_FAULT_OOM
        self._open: dict[int, dict[SecretFile, None]] = {}  # pid -> its open files

    def mmap(self, process: ModelProcess, pages: int) -> SecretFile:
        if process.killed:
            raise ValueError(f"model process {process.pid} was killed")
        f = super().mmap(process, pages)
        self._open.setdefault(process.pid, {})[f] = None
        return f

    def release(self, f: SecretFile) -> None:
        super().release(f)
        files = self._open[f.process.pid]
        del files[f]
        if not files:
            del self._open[f.process.pid]

    # --- the chunks: CMA here, overridden by the PMD-buddy design ----------------------

    def _chunk_alloc(self, f: SecretFile) -> int:
        return self.machine.phys.cma_alloc()

    def _chunk_free(self, f: SecretFile, chunk: int) -> None:
        self.machine.phys.cma_release(chunk)

    def _drained(self) -> str:
        phys = self.machine.phys
        total = phys.cma_chunks
        busy = phys.cma_chunks_free
        return (
            f"the CMA area is drained: {self.chunks_held} of its {total} chunks of 2 MiB "
            f"({total * 2} MiB) are held by {self.files_open} open files, "
            f"{self.pool_waste_pages() * PAGE_BYTES // (1 << 20)} MiB of them unused"
            + (f"; {busy} more could not be cleared of movable pages" if busy else "")
        )

    # --- the fault ----------------------------------------------------------------

    def _get_page(self, f: SecretFile) -> int:
        if f.pool:
            return f.pool.pop()
        m = self.machine
        chunk = self._chunk_alloc(f)
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
            raise self._vm_fault_oom(f)
        pfn = m.phys.alloc(0, UNMOVABLE, f.process.cpu)
        if pfn < 0:
            self.failures += 1
            raise SecretMemoryExhausted(
                f"{self.name}: no chunk from {self.chunk_source} and no order-0 page "
                f"for the fallback ({m.phys.free_pages()} of {m.phys.pages} frames free)"
            )
        m.direct_map.invalidate_page(pfn)
        self._charge(f, PAGE_BYTES)
        f.fallback.add(pfn)
        self.fallback_pages += 1
        self.fallback_faults += 1
        return pfn

    def _vm_fault_oom(self, f: SecretFile) -> PoolExhausted:
        """v16 without a chunk: ``VM_FAULT_OOM``, and what the process got for it."""
        m = self.machine
        free_mib = m.phys.free_pages() * PAGE_BYTES >> 20
        what = f"pooled-PMD model (v16): {self._drained()}; the order-0 fallback is off"
        if not self.kill_on_oom:
            return PoolExhausted(
                f"{what}. v16's fault handler returned VM_FAULT_OOM here and the kernel's "
                "OOM path killed the faulting process; the model backend refuses the "
                "allocation instead, so the vault stays up"
            )
        proc = f.process
        proc.killed = True
        self.oom_kills += 1
        files = list(self._open.get(proc.pid, ()))
        chunks = sum(len(g.chunks) for g in files)
        for g in files:
            self.release(g)
        return OomKilled(
            f"{what}. secretmem_fault returned VM_FAULT_OOM and the page-fault OOM path "
            f"killed model process {proc.pid} (SIGKILL) with {free_mib:,} MiB of memory "
            f"free; its exit released {len(files)} secret file{'s' * (len(files) != 1)} "
            f"and {chunks} chunk{'s' * (chunks != 1)}"
        )

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
            self._chunk_free(f, chunk)
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
            ("oom_kills", float(self.oom_kills)),
        )


class PooledPmdModelBackend(ModelBackend):
    """The ``pooled-pmd-model`` backend: the v16 design, simulated.

    A drained pool raises :class:`PoolExhausted` (``kill_on_oom=False``):
    the model cannot kill the vault it runs in, as v16's OOM path would.
    """

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
                kill_on_oom=False,
            ),
            process=process,
            fault_on_allocate=fault_on_allocate,
        )
