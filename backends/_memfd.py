"""The real backend: each region is one memfd_secret(2) file, mapped shared.

Kernel behaviour this relies on (mm/secretmem.c, measured on 6.18):

* the region's size is fixed by one ``ftruncate``; a second one is EINVAL;
* the whole length is charged to RLIMIT_MEMLOCK at mmap time, so a region's
  size is paid up front in locked-memory headroom even before any page is
  touched;
* the first touch of each page allocates an order-0 zeroed page and removes
  it from the kernel's direct map: the 1 GiB and 2 MiB entries covering it
  are split and, on x86, *never* re-merged, even after the page is freed;
* unmapping the last mapping (the fd is closed right after mmap) zeroes the
  pages and gives them back.
"""

from __future__ import annotations

import os
import threading

from secretvault.api.errors import BackendError
from secretvault.backends import _procfs, _sys
from secretvault.backends._base import BackendStats, DirectMapStats, Protection, Region

_COUNTERS = ("direct_map_level2_splits", "direct_map_level3_splits")


class _DirectMapBaseline:
    """Kernel-wide direct-map counters, as deltas since a starting point."""

    def __init__(self) -> None:
        self.vm = _procfs.vmstat(*_COUNTERS)
        self.mem = _procfs.meminfo()

    def read(self, frames: list[int] | None) -> DirectMapStats:
        vm = _procfs.vmstat(*_COUNTERS)
        mem = _procfs.meminfo()

        def delta(key: str) -> int:
            return mem.get(key, 0) - self.mem.get(key, 0)

        distinct_2m = distinct_1g = None
        if frames:
            distinct_2m, distinct_1g = _procfs.distinct_regions(frames)
        return DirectMapStats(
            source="kernel",
            level2_splits=vm.get(_COUNTERS[0], 0) - self.vm.get(_COUNTERS[0], 0),
            level3_splits=vm.get(_COUNTERS[1], 0) - self.vm.get(_COUNTERS[1], 0),
            directmap_4k=mem.get("DirectMap4k", 0),
            directmap_2m=mem.get("DirectMap2M", 0),
            directmap_1g=mem.get("DirectMap1G", 0),
            directmap_4k_delta=delta("DirectMap4k"),
            directmap_2m_delta=delta("DirectMap2M"),
            directmap_1g_delta=delta("DirectMap1G"),
            distinct_2m_regions=distinct_2m,
            distinct_1g_regions=distinct_1g,
        )


class MemfdSecretBackend:
    """Regions in real secret memory.  Refuses to exist where there is none."""

    def __init__(self) -> None:
        # Probe once, at construction: ENOSYS becomes SecretMemoryUnavailable
        # with the likely cause, before the vault accepts a single key.  The
        # probe file is never mapped, so it costs no memlock.
        fd = _sys.memfd_secret()
        os.close(fd)
        self._lock = threading.Lock()
        self._regions: dict[int, Region] = {}
        self._baseline = _DirectMapBaseline()

    @property
    def name(self) -> str:
        return "memfd_secret"

    @property
    def protection(self) -> Protection:
        return "secretmem"

    def allocate(self, pages: int) -> Region:
        if pages <= 0:
            raise ValueError("a region has at least one page")
        addr = _sys.create_secret_region(pages * _sys.PAGE_SIZE)
        region = Region(addr, pages)
        with self._lock:
            self._regions[addr] = region
        return region

    def free(self, region: Region) -> None:
        # unmap under the lock: statistics() scans mappings under it, and a
        # scan of a region unmapped mid-way fails (mincore: ENOMEM)
        with self._lock:
            if self._regions.pop(region.address, None) is None:
                raise BackendError(f"region at {region.address:#x} is not this backend's")
            _sys.munmap(region.address, region.length)

    def touch(self, address: int) -> None:
        """Nothing to do: the first write faults the page in, allocating it
        and removing it from the direct map (mm/secretmem.c)."""

    def frames(self, region: Region) -> list[int]:
        """Physical frames of the region's resident pages (root only)."""
        return _procfs.pagemap(region.address, region.pages)[1]

    def statistics(self) -> BackendStats:
        resident = 0
        frames: list[int] = []
        with self._lock:  # no region is unmapped while it is scanned
            regions = list(self._regions.values())
            for r in regions:
                # mincore, not pagemap's present bit: a hardened (non-dumpable)
                # process that is not root cannot open its own pagemap
                resident += _sys.mincore(r.address, r.length)
                frames.extend(_procfs.pagemap(r.address, r.pages)[1])
        return BackendStats(
            backend=self.name,
            protection=self.protection,
            regions=len(regions),
            pages_mapped=sum(r.pages for r in regions),
            pages_resident=resident,
            # the kernel refuses hibernation while any secretmem file is
            # alive; our mappings keep theirs alive
            hibernation_inhibited=bool(regions),
            direct_map=self._baseline.read(frames),
        )

    def close(self) -> None:
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
            for r in regions:
                _sys.munmap(r.address, r.length)

