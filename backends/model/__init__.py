"""Models of secret memory: physical memory, the direct map, three designs.

The review of "secretmem: use PMD-size pages to amortize direct map
fragmentation" (v16) weighed a pool of 2 MiB pages against allocating page
by page.  These models answer it with numbers:

* :class:`PhysicalMemory` -- a buddy allocator with migrate types, per-CPU
  lists, kernel-like fallback and a CMA area;
* :class:`DirectMap` -- 1 GiB/2 MiB/4 KiB entries that split one level at a
  time and never merge, with the kernel's counters;
* :class:`BackgroundWorkload` -- the rest of the machine, seeded;
* :class:`Machine` -- all of it plus processes, rlimits and memcgs;
* :class:`PageByPageDesign` / :class:`PooledPmdDesign` -- the merged design
  and the v16 pool (``VM_FAULT_OOM`` when drained: :class:`OomKilled`);
* :class:`PmdBuddyDesign` -- the review's third possibility: the pool filled
  by plain order-9 buddy allocations, order 0 when no 2 MiB block is free;
* :class:`PageModelBackend` / :class:`PooledPmdModelBackend` -- the same, as
  real backends (``page-model``, ``pooled-pmd-model``) the vault can run on,
  with locked ordinary memory and ``protection="model"``.

``scenarios``, ``report`` and ``validate`` build on these.
"""

from __future__ import annotations

from typing import Literal

from secretvault.api.errors import InvalidArgument
from secretvault.backends.model._backend import ModelBackend, inherited_memlock_limit
from secretvault.backends.model._directmap import DirectMap
from secretvault.backends.model._machine import (
    DEFAULT_CMA,
    DEFAULT_MEMLOCK,
    DEFAULT_MEMORY,
    Machine,
    Memcg,
    MiB,
    ModelProcess,
    SecretFile,
    SecretmemDesign,
)
from secretvault.backends.model._pagebypage import PageByPageDesign, PageModelBackend
from secretvault.backends.model._physmem import (
    CMA,
    MIGRATE_NAMES,
    MOVABLE,
    PAGEBLOCK_PAGES,
    RECLAIMABLE,
    UNMOVABLE,
    PhysicalMemory,
)
from secretvault.backends.model._pmdbuddy import PmdBuddyDesign
from secretvault.backends.model._pooled import OomKilled, PooledPmdDesign, PooledPmdModelBackend
from secretvault.backends.model._workload import QUIET, BackgroundWorkload, WorkloadConfig

#: the CLI's ``--backend`` values of the two models
MODEL_BACKENDS: tuple[str, ...] = (PageByPageDesign.name, PooledPmdDesign.name)


def make_model_backend(
    name: str,
    *,
    memory_bytes: int = DEFAULT_MEMORY,
    cma_bytes: int = DEFAULT_CMA,
    fallback: bool = False,
    seed: int = 0,
    memlock_limit: int | Literal["inherit"] | None = "inherit",
    workload: WorkloadConfig | None = None,
    fault_on_allocate: bool = True,
) -> ModelBackend:
    """A model backend by its CLI name, from configuration values.

    ``memlock_limit`` is the model process's RLIMIT_MEMLOCK in bytes;
    ``"inherit"`` (the default) takes this process's own (none with
    CAP_IPC_LOCK or when unlimited); ``None`` means unlimited.
    ``cma_bytes`` and ``fallback`` only concern the pooled model; the
    page-by-page model reserves no CMA area.  Bad values raise
    :class:`~secretvault.api.errors.InvalidArgument`.
    """
    limit = inherited_memlock_limit() if memlock_limit == "inherit" else memlock_limit
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidArgument(f"memlock_limit must be a byte count or None, not {limit!r}")
    if name not in MODEL_BACKENDS:
        raise InvalidArgument(
            f"unknown model backend {name!r}; expected one of {', '.join(MODEL_BACKENDS)}"
        )
    pooled = name == PooledPmdDesign.name
    if memory_bytes < 64 * MiB:
        raise InvalidArgument(f"model memory of {memory_bytes} bytes: give at least 64 MiB")
    if pooled and not 0 < cma_bytes <= memory_bytes // 2:
        raise InvalidArgument(
            f"the pooled model's CMA area of {cma_bytes} bytes must be more than 0 "
            f"and at most half the model memory ({memory_bytes} bytes)"
        )
    machine = Machine(
        memory_bytes=memory_bytes,
        cma_bytes=cma_bytes if pooled else 0,
        seed=seed,
        workload=workload,
    )
    process = machine.spawn(memlock_limit=limit)
    if pooled:
        return PooledPmdModelBackend(
            machine, fallback=fallback, process=process, fault_on_allocate=fault_on_allocate
        )
    return PageModelBackend(machine, process=process, fault_on_allocate=fault_on_allocate)


__all__ = [
    "CMA",
    "DEFAULT_CMA",
    "DEFAULT_MEMLOCK",
    "DEFAULT_MEMORY",
    "MIGRATE_NAMES",
    "MODEL_BACKENDS",
    "MOVABLE",
    "PAGEBLOCK_PAGES",
    "QUIET",
    "RECLAIMABLE",
    "UNMOVABLE",
    "BackgroundWorkload",
    "DirectMap",
    "Machine",
    "Memcg",
    "ModelBackend",
    "ModelProcess",
    "OomKilled",
    "PageByPageDesign",
    "PageModelBackend",
    "PhysicalMemory",
    "PmdBuddyDesign",
    "PooledPmdDesign",
    "PooledPmdModelBackend",
    "SecretFile",
    "SecretmemDesign",
    "WorkloadConfig",
    "inherited_memlock_limit",
    "make_model_backend",
]
