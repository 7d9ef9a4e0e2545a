"""The page-by-page design: what was merged (``mm/secretmem.c`` since 5.14).

* ``mmap`` charges the whole length to RLIMIT_MEMLOCK (``_machine``).
* Each first touch allocates one order-0 page -- ``GFP_HIGHUSER``, i.e.
  *unmovable* -- removes it from the direct map on its own (splitting the
  1 GiB and 2 MiB entries above it if they are still whole) and charges it
  to the memcg as one page of page cache.
* Freeing (the last mapping and fd gone) puts each page back in the direct
  map -- without merging: splits stay -- and frees it, to the head of the
  per-CPU list, where the next unmovable allocation of any kind finds it.
"""

from __future__ import annotations

from secretvault.api.errors import SecretMemoryExhausted
from secretvault.backends.model._backend import ModelBackend
from secretvault.backends.model._directmap import PAGE_BYTES
from secretvault.backends.model._machine import Machine, ModelProcess, SecretFile, SecretmemDesign
from secretvault.backends.model._physmem import UNMOVABLE


class PageByPageDesign(SecretmemDesign):
    """Order-0 unmovable pages, one direct-map change each, memcg per page."""

    name = "page-model"

    def _get_page(self, f: SecretFile) -> int:
        m = self.machine
        pfn = m.phys.alloc(0, UNMOVABLE, f.process.cpu)
        if pfn < 0:
            self.failures += 1
            raise SecretMemoryExhausted(
                f"page-by-page model: no free page for a secret page fault "
                f"({m.phys.free_pages()} of {m.phys.pages} frames free, none usable "
                "by an unmovable allocation)"
            )
        m.direct_map.invalidate_page(pfn)
        self._charge(f, PAGE_BYTES)
        return pfn

    def _put_pages(self, f: SecretFile) -> None:
        m = self.machine
        cpu = f.process.cpu
        for pfn in f.frames:
            if pfn >= 0:
                m.direct_map.restore_page(pfn)
                m.phys.free(pfn, 0, UNMOVABLE, cpu)
        self._uncharge(f, f.faulted * PAGE_BYTES)


class PageModelBackend(ModelBackend):
    """The ``page-model`` backend: the merged design, simulated."""

    def __init__(
        self,
        machine: Machine | None = None,
        *,
        process: ModelProcess | None = None,
        fault_on_allocate: bool = True,
    ) -> None:
        super().__init__(
            PageByPageDesign(machine if machine is not None else Machine()),
            process=process,
            fault_on_allocate=fault_on_allocate,
        )
