"""The model backends' shared half: real locked bytes beside a simulation.

A model backend is a real :class:`~secretvault.backends.SecretMemoryBackend`: each
region is ordinary anonymous memory, locked (``mlock``), ``MADV_DONTDUMP``
and ``MADV_DONTFORK`` (``_sys.mmap_anonymous_locked``), so a vault and its slot
allocator run on it unchanged.  It is *not* secret memory -- it stays in the
kernel's direct map and root can read it -- and every stat says so with
``protection="model"``.

Beside the bytes, each region is a secret file of a simulated machine
(:class:`~secretvault.backends.model._machine.SecretmemDesign`), whose frames, direct
map and charges are what :meth:`ModelBackend.statistics` reports.

Page faults: a real first touch cannot be observed on locked memory (mlock
faults every page in at once), so the model is told.  The slot allocator
calls :meth:`touch` when it first carves a page, and the vault builds its
model backends with ``fault_on_allocate=False``: a page is faulted (charged,
removed from the simulated direct map) at first use, as memfd_secret does.
Without that flag every page of a region is faulted at :meth:`allocate`,
which is what the scenarios of whole secret files want.
"""

from __future__ import annotations

import threading

from secretvault.api.errors import BackendError
from secretvault.backends import _procfs, _sodium, _sys
from secretvault.backends._base import BackendStats, DirectMapStats, Protection, Region
from secretvault.backends.model._machine import Machine, ModelProcess, SecretFile, SecretmemDesign

PAGE_SIZE = _procfs.PAGE_SIZE


def inherited_memlock_limit() -> int | None:
    """This process's RLIMIT_MEMLOCK for the model (None: unlimited/CAP_IPC_LOCK)."""
    soft, _ = _sys.memlock_rlimit()
    if soft < 0 or _procfs.has_cap_ipc_lock():
        return None
    return soft


class ModelBackend:
    """Regions of locked ordinary memory, accounted by a simulated design."""

    def __init__(
        self,
        design: SecretmemDesign,
        *,
        process: ModelProcess | None = None,
        fault_on_allocate: bool = True,
    ) -> None:
        if PAGE_SIZE != 4096:
            raise BackendError(
                f"the models simulate x86-64 with 4 KiB pages; this machine has {PAGE_SIZE}"
            )
        self._design = design
        self._process = (
            process
            if process is not None
            else design.machine.spawn(memlock_limit=inherited_memlock_limit())
        )
        self._fault_on_allocate = fault_on_allocate
        self._lock = threading.Lock()
        self._regions: dict[int, tuple[Region, SecretFile]] = {}

    @property
    def name(self) -> str:
        return self._design.name

    @property
    def protection(self) -> Protection:
        return "model"

    @property
    def design(self) -> SecretmemDesign:
        return self._design

    @property
    def machine(self) -> Machine:
        return self._design.machine

    @property
    def process(self) -> ModelProcess:
        return self._process

    def allocate(self, pages: int) -> Region:
        if pages <= 0:
            raise ValueError("a region has at least one page")
        length = pages * PAGE_SIZE
        with self._lock:
            # the model's mmap first: its rlimit refuses before real memory
            # is locked, as secretmem_mmap refuses before any page exists
            f = self._design.mmap(self._process, pages)
            try:
                addr = _sys.mmap_anonymous_locked(length)
            except BaseException:
                self._design.release(f)
                raise
            try:
                if self._fault_on_allocate:
                    for i in range(pages):
                        self._design.fault(f, i)
            except BaseException:
                _sys.munmap(addr, length)
                self._design.release(f)
                raise
            region = Region(addr, pages)
            self._regions[addr] = (region, f)
        return region

    def _find(self, address: int) -> tuple[Region, SecretFile]:
        for region, f in self._regions.values():
            if region.address <= address < region.address + region.length:
                return region, f
        raise BackendError(f"address {address:#x} is in no region of this backend")

    def touch(self, address: int) -> None:
        """First use of the page holding ``address``: fault it in the model.

        Idempotent per page; :meth:`frames` gives the simulated frame.
        """
        with self._lock:
            region, f = self._find(address)
            self._design.fault(f, (address - region.address) // PAGE_SIZE)

    def frames(self, region: Region) -> list[int]:
        """Simulated frames of the region's faulted pages, in page order."""
        with self._lock:
            entry = self._regions.get(region.address)
            if entry is None:
                raise BackendError(f"region at {region.address:#x} is not this backend's")
            return [p for p in entry[1].frames if p >= 0]

    def free(self, region: Region) -> None:
        with self._lock:
            entry = self._regions.pop(region.address, None)
            if entry is None:
                raise BackendError(f"region at {region.address:#x} is not this backend's")
            self._unmap(*entry)

    def _unmap(self, region: Region, f: SecretFile) -> None:
        # secretmem zeroes a page before it goes back to the allocator; the
        # model zeroes its bytes before they go back to the kernel
        _sodium.sodium_memzero(_sodium.pointer(region.address), region.length)
        _sys.munmap(region.address, region.length)
        self._design.release(f)

    def statistics(self) -> BackendStats:
        with self._lock:
            files = [f for _, f in self._regions.values()]
            regions = len(files)
            pages_mapped = sum(f.pages for f in files)
            resident = sum(f.faulted for f in files)
            frames = [p for f in files for p in f.frames if p >= 0]
            m = self._design.machine
            dm = m.direct_map
            boot_4k, boot_2m, boot_1g = m.boot_directmap
            distinct_2m, distinct_1g = _procfs.distinct_regions(frames)
            direct_map = DirectMapStats(
                source="model",
                level2_splits=dm.level2_splits,
                level3_splits=dm.level3_splits,
                directmap_4k=dm.bytes_4k,
                directmap_2m=dm.bytes_2m,
                directmap_1g=dm.bytes_1g,
                directmap_4k_delta=dm.bytes_4k - boot_4k,
                directmap_2m_delta=dm.bytes_2m - boot_2m,
                directmap_1g_delta=dm.bytes_1g - boot_1g,
                distinct_2m_regions=distinct_2m,
                distinct_1g_regions=distinct_1g,
            )
            extra = (
                *self._design.extra(),
                ("locked_vm_bytes", float(self._process.locked_vm)),
            )
        return BackendStats(
            backend=self.name,
            protection=self.protection,
            regions=regions,
            pages_mapped=pages_mapped,
            pages_resident=resident,
            # no secretmem file exists: hibernation stays available
            hibernation_inhibited=False,
            direct_map=direct_map,
            extra=extra,
        )

    def close(self) -> None:
        with self._lock:
            entries = list(self._regions.values())
            self._regions.clear()
            for region, f in entries:
                self._unmap(region, f)
