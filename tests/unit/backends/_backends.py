"""Backends for the allocator's unit tests: a real one, observed.

:class:`AnonymousBackend` hands out locked, no-dump, no-fork *anonymous*
memory through ``secretvault.backends._sys`` (the same calls the model backends use), so
the allocator's rules are checked on machines without memfd_secret too.
:class:`Recording` wraps any backend and records what the allocator asked of
it; :class:`MemlockBudget` makes it refuse regions past a page budget with
the same error the kernel's EAGAIN becomes, to drive the allocator's
near-the-limit path without dropping privileges (the real limit is tested in
tests/security).
"""

from __future__ import annotations

import os

from secretvault.api.errors import BackendError, MemlockExceeded
from secretvault.backends import _sys
from secretvault.backends._base import (
    BackendStats,
    DirectMapStats,
    Protection,
    Region,
    SecretMemoryBackend,
)

_NO_DIRECT_MAP = DirectMapStats(
    source="model",
    level2_splits=0,
    level3_splits=0,
    directmap_4k=0,
    directmap_2m=0,
    directmap_1g=0,
    directmap_4k_delta=0,
    directmap_2m_delta=0,
    directmap_1g_delta=0,
    distinct_2m_regions=None,
    distinct_1g_regions=None,
)


class AnonymousBackend:
    """Ordinary locked memory: *not* secret, for allocator logic only."""

    def __init__(self) -> None:
        self.regions: dict[int, Region] = {}

    @property
    def name(self) -> str:
        return "anonymous-test"

    @property
    def protection(self) -> Protection:
        return "model"

    def allocate(self, pages: int) -> Region:
        addr = _sys.mmap_anonymous_locked(pages * _sys.PAGE_SIZE)
        region = Region(addr, pages)
        self.regions[addr] = region
        return region

    def touch(self, address: int) -> None:
        """mlock already faulted every page in."""

    def free(self, region: Region) -> None:
        if self.regions.pop(region.address, None) is None:
            raise BackendError(f"region at {region.address:#x} is not this backend's")
        _sys.munmap(region.address, region.length)

    def statistics(self) -> BackendStats:
        return BackendStats(
            backend=self.name,
            protection=self.protection,
            regions=len(self.regions),
            pages_mapped=sum(r.pages for r in self.regions.values()),
            pages_resident=0,
            hibernation_inhibited=False,
            direct_map=_NO_DIRECT_MAP,
        )

    def close(self) -> None:
        for r in list(self.regions.values()):
            self.free(r)


class Recording:
    """Delegates to ``inner`` and records every allocate/free."""

    def __init__(self, inner: SecretMemoryBackend) -> None:
        self.inner = inner
        self.allocated: list[int] = []  # pages asked for, in order (successes)
        self.refused: list[int] = []  # pages asked for and refused
        self.freed: list[Region] = []
        self.touched: list[int] = []  # first uses of pages, by address
        self.closed = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def protection(self) -> Protection:
        return self.inner.protection

    @property
    def live_pages(self) -> int:
        return sum(self.allocated) - sum(r.pages for r in self.freed)

    def allocate(self, pages: int) -> Region:
        try:
            region = self.inner.allocate(pages)
        except MemlockExceeded:
            self.refused.append(pages)
            raise
        self.allocated.append(pages)
        return region

    def touch(self, address: int) -> None:
        self.touched.append(address)
        self.inner.touch(address)

    def free(self, region: Region) -> None:
        self.freed.append(region)
        self.inner.free(region)

    def statistics(self) -> BackendStats:
        return self.inner.statistics()

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class MemlockBudget(Recording):
    """Refuses a region that would take the live total past ``budget`` pages."""

    def __init__(self, inner: SecretMemoryBackend, budget: int) -> None:
        super().__init__(inner)
        self.budget = budget

    def allocate(self, pages: int) -> Region:
        if self.live_pages + pages > self.budget:
            self.refused.append(pages)
            raise MemlockExceeded(f"test budget of {self.budget} pages")
        return super().allocate(pages)


def vma(address: int) -> dict[str, str]:
    """The /proc/self/smaps entry of the mapping holding ``address``.

    Keys: ``range``, ``path`` (e.g. ``/secretmem (deleted)``) and every
    field of the entry (``VmFlags``, ``Rss``, ``Locked``...); empty when no
    mapping holds ``address``.
    """
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        current: dict[str, str] | None = None
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and ":" not in head[0]:
                if current is not None:
                    return current
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                current = (
                    {"range": head[0], "path": head[5].strip() if len(head) > 5 else ""}
                    if lo <= address < hi
                    else None
                )
            elif current is not None:
                key, _, value = line.partition(":")
                current[key] = value.strip()
    return current or {}


def secret_fds() -> set[int]:
    """This process's open file descriptors on a secretmem file."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if "secretmem" in os.readlink(f"/proc/self/fd/{name}"):
                out.add(int(name))
        except OSError:  # the fd listdir itself used, now closed
            pass
    return out
