"""A simulated machine: physical memory, direct map, background, accounting.

The two secret-memory designs (``_pagebypage.py``, ``_pooled.py``) run on a
:class:`Machine`.  They share what the kernel shares: processes with their
``locked_vm`` and RLIMIT_MEMLOCK, memory cgroups with their charges, and the
system-wide ``Mlocked``/``Unevictable`` figures of ``/proc/meminfo``.

:class:`SecretmemDesign` holds what both designs do alike -- the mmap-time
rlimit charge and the bookkeeping of faults and failures -- and leaves
where a page comes from, and what it costs, to each design.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from secretvault.api.errors import MemlockExceeded
from secretvault.backends.model._directmap import PAGE_BYTES, DirectMap
from secretvault.backends.model._physmem import PhysicalMemory
from secretvault.backends.model._workload import BackgroundWorkload, WorkloadConfig

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_MEMORY = 4 * GiB
DEFAULT_CMA = 256 * MiB
#: RLIMIT_MEMLOCK of an unprivileged process on the project's machines
DEFAULT_MEMLOCK = 8 * MiB
#: low memory kept from the allocator: ZONE_DMA (16 MiB), which holds the
#: 4 KiB-mapped first megabyte and which ordinary allocations avoid
RESERVED_LOW = 16 * MiB


@dataclass(eq=False)
class Memcg:
    """A memory cgroup's secret-memory charges, in bytes."""

    path: str
    charged: int = 0  # what the memcg is charged for secret memory
    used: int = 0  # bytes of secret pages actually faulted for its tasks
    peak_charged: int = 0
    peak_used: int = 0
    peak_overcharge: int = 0

    def charge(self, nbytes: int) -> None:
        # over-charge is tracked when the page is used (right after): a
        # per-page charge is never over, even for an instant
        self.charged += nbytes
        self.peak_charged = max(self.peak_charged, self.charged)

    def uncharge(self, nbytes: int) -> None:
        self.charged -= nbytes

    def use(self, nbytes: int) -> None:
        self.used += nbytes
        self.peak_used = max(self.peak_used, self.used)
        self._track()

    def _track(self) -> None:
        over = self.charged - self.used
        if over > self.peak_overcharge:
            self.peak_overcharge = over

    @property
    def overcharge(self) -> int:
        return self.charged - self.used


@dataclass(eq=False)
class ModelProcess:
    """A process: its memcg, ``mm->locked_vm`` and RLIMIT_MEMLOCK."""

    pid: int
    memcg: Memcg
    memlock_limit: int | None  # bytes; None: unlimited (or CAP_IPC_LOCK)
    cpu: int = 0
    locked_vm: int = 0
    killed: bool = False  # by the OOM path of a fault (the v16 pool)


@dataclass(eq=False)
class SecretFile:
    """One memfd_secret file, sized once and mapped by one process."""

    process: ModelProcess
    pages: int
    frames: list[int]  # per page index: the frame, or -1 before first touch
    faulted: int = 0
    closed: bool = False
    # the pooled design's per-file pool
    chunks: list[int] = field(default_factory=list)
    pool: list[int] = field(default_factory=list)
    fallback: set[int] = field(default_factory=set)


class Machine:
    """Physical memory, the direct map and the rest of the system.

    ``memory_bytes`` of RAM from frame 0 (its first 16 MiB, ZONE_DMA, kept
    from the allocator), the top ``cma_bytes`` reserved as a CMA area at
    "boot", the direct map in its boot layout, and a seeded
    background workload warmed up to its steady state.
    """

    def __init__(
        self,
        *,
        memory_bytes: int = DEFAULT_MEMORY,
        cma_bytes: int = 0,
        seed: int = 0,
        workload: WorkloadConfig | None = None,
        ncpus: int = 2,
    ) -> None:
        self.phys = PhysicalMemory(
            memory_bytes // PAGE_BYTES,
            cma_pages=cma_bytes // PAGE_BYTES,
            reserved_pages=min(RESERVED_LOW, memory_bytes // 8) // PAGE_BYTES,
            ncpus=ncpus,
        )
        self.direct_map = DirectMap.boot(self.phys.pages)
        self.boot_directmap = (
            self.direct_map.bytes_4k,
            self.direct_map.bytes_2m,
            self.direct_map.bytes_1g,
        )
        self.seed = seed
        config = workload if workload is not None else WorkloadConfig()
        self.workload = BackgroundWorkload(self.phys, config, seed)
        self.mlocked = 0
        self.unevictable = 0
        self.memcgs: dict[str, Memcg] = {"/": Memcg("/")}
        self._next_pid = 1

    def memcg(self, path: str = "/") -> Memcg:
        cg = self.memcgs.get(path)
        if cg is None:
            cg = self.memcgs[path] = Memcg(path)
        return cg

    def spawn(
        self,
        *,
        memcg: str = "/",
        memlock_limit: int | None = DEFAULT_MEMLOCK,
        cpu: int = 0,
    ) -> ModelProcess:
        pid = self._next_pid
        self._next_pid += 1
        return ModelProcess(pid, self.memcg(memcg), memlock_limit, cpu % self.phys.ncpus)

    def meminfo(self) -> dict[str, int]:
        """The /proc/meminfo lines the model keeps, in bytes."""
        dm = self.direct_map
        return {
            "MemTotal": self.phys.pages * PAGE_BYTES,
            "MemFree": self.phys.free_pages() * PAGE_BYTES,
            "Mlocked": self.mlocked,
            "Unevictable": self.unevictable,
            "DirectMap4k": dm.bytes_4k,
            "DirectMap2M": dm.bytes_2m,
            "DirectMap1G": dm.bytes_1g,
        }

    def vmstat(self) -> dict[str, int]:
        dm = self.direct_map
        return {
            "direct_map_level2_splits": dm.level2_splits,
            "direct_map_level3_splits": dm.level3_splits,
            # secretmem never collapses the direct map back
            "direct_map_level2_collapses": 0,
            "direct_map_level3_collapses": 0,
        }


class SecretmemDesign:
    """What both designs share: mmap-time rlimit, fault bookkeeping."""

    name = "secretmem-design"

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.faults = 0  # secret page faults served
        self.failures = 0  # faults refused (pool exhausted, out of memory)
        self.pages_in_use = 0  # faulted pages of open files
        self.peak_pages = 0
        self.files_open = 0
        # memcg charges for secret memory, summed over every memcg
        self.charged = 0
        self.peak_overcharge = 0  # max over time of charged - in use (bytes)
        self.peak_waste_pages = 0

    # --- the syscalls -----------------------------------------------------------

    def mmap(self, process: ModelProcess, pages: int) -> SecretFile:
        """memfd_secret + ftruncate + mmap.

        ``secretmem_mmap`` charges the whole length to RLIMIT_MEMLOCK before
        any page is touched (``mlock_future_ok``; EAGAIN when over).  Every
        version with a system call did so, the v16 pool included.
        """
        if pages <= 0:
            raise ValueError("a secret file has at least one page")
        length = pages * PAGE_BYTES
        limit = process.memlock_limit
        if limit is not None and process.locked_vm + length > limit:
            raise MemlockExceeded(
                f"model mmap of secret memory refused (EAGAIN): model process "
                f"{process.pid} has RLIMIT_MEMLOCK {limit} bytes, {process.locked_vm} "
                f"bytes locked, request {length} bytes"
            )
        process.locked_vm += length
        self.files_open += 1
        return SecretFile(process, pages, [-1] * pages)

    def fault(self, f: SecretFile, index: int) -> int:
        """First touch of page ``index``: its frame (a no-op if faulted)."""
        pfn = f.frames[index]
        if pfn >= 0:
            return pfn
        if f.closed:
            raise ValueError("fault on a closed secret file")
        pfn = self._get_page(f)
        f.frames[index] = pfn
        f.faulted += 1
        self.faults += 1
        self.pages_in_use += 1
        if self.pages_in_use > self.peak_pages:
            self.peak_pages = self.pages_in_use
        m = self.machine
        # the VMA is VM_LOCKED and the mapping unevictable
        m.mlocked += PAGE_BYTES
        m.unevictable += PAGE_BYTES
        f.process.memcg.use(PAGE_BYTES)
        over = self.charged - self.pages_in_use * PAGE_BYTES
        if over > self.peak_overcharge:
            self.peak_overcharge = over
        waste = self.pool_waste_pages()
        if waste > self.peak_waste_pages:
            self.peak_waste_pages = waste
        m.workload.run(1)
        return pfn

    def release(self, f: SecretFile) -> None:
        """munmap + close: the last reference goes, the pages are freed."""
        if f.closed:
            raise ValueError("secret file released twice")
        f.closed = True
        self._put_pages(f)
        m = self.machine
        m.mlocked -= f.faulted * PAGE_BYTES
        m.unevictable -= f.faulted * PAGE_BYTES
        f.process.memcg.used -= f.faulted * PAGE_BYTES
        f.process.locked_vm -= f.pages * PAGE_BYTES
        self.pages_in_use -= f.faulted
        self.files_open -= 1

    # --- per design ----------------------------------------------------------------

    def _charge(self, f: SecretFile, nbytes: int) -> None:
        f.process.memcg.charge(nbytes)
        self.charged += nbytes

    def _uncharge(self, f: SecretFile, nbytes: int) -> None:
        f.process.memcg.uncharge(nbytes)
        self.charged -= nbytes

    def _get_page(self, f: SecretFile) -> int:
        raise NotImplementedError

    def _put_pages(self, f: SecretFile) -> None:
        raise NotImplementedError

    def pool_waste_pages(self) -> int:
        """Frames held for secret memory but holding no secret page."""
        return 0

    def extra(self) -> tuple[tuple[str, float], ...]:
        """Design-specific figures for ``BackendStats.extra``."""
        m = self.machine
        return (
            ("faults", float(self.faults)),
            ("allocation_failures", float(self.failures)),
            ("pool_waste_bytes", float(self.pool_waste_pages() * PAGE_BYTES)),
            ("memcg_charged_bytes", float(self.charged)),
            ("memcg_overcharge_bytes", float(self.charged - self.pages_in_use * PAGE_BYTES)),
            ("mlocked_bytes", float(m.mlocked)),
            ("unevictable_bytes", float(m.unevictable)),
        )
