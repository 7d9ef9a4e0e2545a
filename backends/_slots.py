"""The slot allocator: many keys per secret page, over any backend.

Keys are 32 or 64 bytes; a page is 4096.  Giving each key its own region
would cost a page of locked memory, a VMA, a file and a direct-map split per
key, so keys are packed:

* **regions** come from the backend and grow with the keyring: a new region
  is about 1/16 of what is already mapped (between ``min_region_pages`` and
  ``max_region_pages``), which amortizes the per-region cost (a syscall, an
  mmap, a VMA, and on memfd_secret a file) while keeping memlock charged for
  mapped-but-unused pages under ~6% once the keyring is large;
* **pages** inside a region are carved on demand into one size class each
  (32, 64, 128, 256 bytes), so a page is touched (and, on memfd_secret,
  faulted in and removed from the direct map) only when a slot in it is
  needed;
* **slots** are handed out lowest-address first in the fullest page, which
  keeps live keys dense and lets empty pages and regions be given back.

A freed slot is wiped with ``sodium_memzero`` before it can be reused.  A
region whose pages are all free is unmapped, except for a small reserve of
empty regions kept to absorb create/delete churn.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from secretvault.api.errors import InvalidArgument, MemlockExceeded, SlotFreed
from secretvault.backends import _procfs, _sodium, _sys
from secretvault.backends._base import (
    KEY_SLOT_SIZES,
    MemlockStats,
    Region,
    SecretMemoryBackend,
    SecretMemoryStats,
    SizeClassStats,
)

PAGE_SIZE = _procfs.PAGE_SIZE
SIZE_CLASSES: tuple[int, ...] = (32, 64, 128, 256)


def size_class(size: int) -> int:
    if size < 1:
        raise InvalidArgument(f"a slot holds at least 1 byte; {size} were asked for")
    for c in SIZE_CLASSES:
        if size <= c:
            return c
    raise InvalidArgument(
        f"a slot holds at most {SIZE_CLASSES[-1]} bytes; {size} were asked for"
    )


@dataclass(eq=False)
class _RegionState:
    region: Region
    next_untouched: int = 0  # pages [next_untouched, pages) never carved
    free_pages: list[int] = field(default_factory=list)  # carved, now empty
    pages_in_use: int = 0

    @property
    def has_page(self) -> bool:
        return bool(self.free_pages) or self.next_untouched < self.region.pages


@dataclass(eq=False)
class _Page:
    region: _RegionState
    index: int
    size: int
    free: list[int]  # slot offsets within the page, a heap
    used: int = 0

    @property
    def address(self) -> int:
        return self.region.region.address + self.index * PAGE_SIZE


class Slot:
    """A handle on ``size`` bytes of secret memory.

    ``ptr`` is a cffi ``unsigned char *`` straight into the region: hand it
    to libsodium, never copy out of it.  After :meth:`free` every use raises
    :class:`~secretvault.api.errors.SlotFreed`.
    """

    __slots__ = ("_allocator", "_page", "_ptr", "address", "size")

    def __init__(self, allocator: SlotAllocator, page: _Page, address: int, size: int) -> None:
        self._allocator = allocator
        self._page: _Page | None = page
        self.address = address
        self.size = size
        self._ptr = _sodium.pointer(address)

    @property
    def ptr(self) -> _sodium.Ptr:
        if self._page is None:
            raise SlotFreed("this slot was freed; its memory is zeroed and may be reused")
        if self._allocator._closed:
            # the region is unmapped: a pointer into it would crash the process
            raise SlotFreed("the allocator was closed; this slot's memory is unmapped")
        return self._ptr

    @property
    def freed(self) -> bool:
        return self._page is None or self._allocator._closed

    def free(self) -> None:
        """Zero the slot and give it back.  Idempotent is *not* offered:
        freeing twice is a bug and raises."""
        self._allocator.free(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._page is not None:
            self.free()

    def __repr__(self) -> str:
        state = "freed" if self._page is None else f"{self.size} bytes"
        return f"<Slot {state} at {self.address:#x}>"


class SlotAllocator:
    """Packs fixed-size slots into pages of regions from one backend."""

    def __init__(
        self,
        backend: SecretMemoryBackend,
        *,
        min_region_pages: int = 16,
        max_region_pages: int = 256,
        reserve_regions: int = 1,
    ) -> None:
        if not 1 <= min_region_pages <= max_region_pages:
            raise ValueError("need 1 <= min_region_pages <= max_region_pages")
        self.backend = backend
        self._min = min_region_pages
        self._max = max_region_pages
        self._reserve = reserve_regions
        self._lock = threading.Lock()
        self._regions: list[_RegionState] = []
        # per size class, pages with a free slot bucketed by slots used
        # (insertion-ordered dicts as ordered sets): the fullest page is
        # found without scanning pages, however many partial pages churn
        # leaves behind
        self._partial: dict[int, list[dict[_Page, None]]] = {
            c: [{} for _ in range(PAGE_SIZE // c)] for c in SIZE_CLASSES
        }
        self._pages: dict[int, set[_Page]] = {c: set() for c in SIZE_CLASSES}
        self._used_bytes = 0
        self._closed = False

    # --- allocation ---------------------------------------------------------

    def allocate(self, size: int) -> Slot:
        """A zero-filled slot of at least ``size`` bytes."""
        cls = size_class(size)
        with self._lock:
            if self._closed:
                raise SlotFreed("the allocator is closed")
            page = self._page_with_room(cls)
            offset = heapq.heappop(page.free)
            buckets = self._partial[cls]
            del buckets[page.used][page]
            page.used += 1
            if page.free:
                buckets[page.used][page] = None
            self._used_bytes += size
            return Slot(self, page, page.address + offset, size)

    def _page_with_room(self, cls: int) -> _Page:
        # the fullest page first: keeps live slots dense, lets others empty
        # (backends/model/_keyring_sim.KeyringSim makes the same choices)
        for bucket in reversed(self._partial[cls]):
            if bucket:
                return next(iter(bucket))
        state = next((r for r in self._regions if r.has_page), None)
        if state is None:
            state = self._new_region()
        if state.free_pages:
            index = state.free_pages.pop()
        else:
            index = state.next_untouched
            # may fail (a model's pool exhausted): before any state changes
            self.backend.touch(state.region.address + index * PAGE_SIZE)
            state.next_untouched += 1
        state.pages_in_use += 1
        page = _Page(state, index, cls, list(range(0, PAGE_SIZE - cls + 1, cls)))
        self._partial[cls][0][page] = None
        self._pages[cls].add(page)
        return page

    def _new_region(self) -> _RegionState:
        mapped = sum(r.region.pages for r in self._regions)
        pages = max(self._min, min(self._max, mapped // 16))
        while True:
            try:
                region = self.backend.allocate(pages)
                break
            except MemlockExceeded:
                # Near the limit, a smaller region may still fit: use the
                # headroom to the last page before reporting exhaustion.
                if pages == 1:
                    raise
                pages //= 2
        state = _RegionState(region)
        self._regions.append(state)
        return state

    # --- free ---------------------------------------------------------------

    def free(self, slot: Slot) -> None:
        with self._lock:
            page = slot._page
            if page is None:
                raise SlotFreed("this slot was already freed")
            if self._closed:
                # close() zeroed and unmapped every region: writing through
                # the pointer now would fault, and there is nothing to wipe
                slot._page = None
                return
            # wipe before anything else can see the memory again
            _sodium.sodium_memzero(slot._ptr, page.size)
            slot._page = None
            self._used_bytes -= slot.size
            buckets = self._partial[page.size]
            if page.free:  # a full page is in no bucket
                del buckets[page.used][page]
            heapq.heappush(page.free, slot.address - page.address)
            page.used -= 1
            if page.used:
                buckets[page.used][page] = None
            else:
                self._release_page(page)

    def _release_page(self, page: _Page) -> None:
        self._pages[page.size].discard(page)
        state = page.region
        state.pages_in_use -= 1
        state.free_pages.append(page.index)
        if state.pages_in_use == 0:
            empty = sum(1 for r in self._regions if r.pages_in_use == 0)
            if empty > self._reserve:
                self._regions.remove(state)
                self.backend.free(state.region)

    # --- teardown -------------------------------------------------------------

    def close(self) -> None:
        """Zero every page still mapped and give every region back."""
        with self._lock:
            self._closed = True
            for state in self._regions:
                touched = state.next_untouched
                if touched:
                    _sodium.sodium_memzero(
                        _sodium.pointer(state.region.address), touched * PAGE_SIZE
                    )
                self.backend.free(state.region)
            self._regions.clear()
            for c in SIZE_CLASSES:
                for bucket in self._partial[c]:
                    bucket.clear()
                self._pages[c].clear()
        self.backend.close()

    # --- accounting ---------------------------------------------------------

    def statistics(
        self, key_sizes: Mapping[str, int] = KEY_SLOT_SIZES
    ) -> SecretMemoryStats:
        b = self.backend.statistics()
        with self._lock:
            classes = tuple(
                SizeClassStats(
                    size=c,
                    pages=len(self._pages[c]),
                    slots_used=sum(p.used for p in self._pages[c]),
                    slots_free=sum(len(p.free) for p in self._pages[c]),
                )
                for c in SIZE_CLASSES
            )
            spare_pages = sum(
                len(r.free_pages) + r.region.pages - r.next_untouched for r in self._regions
            )
            used_bytes = self._used_bytes
        memlock = _memlock_stats(classes, spare_pages, key_sizes)
        return SecretMemoryStats(
            backend=b.backend,
            protection=b.protection,
            regions=b.regions,
            pages_mapped=b.pages_mapped,
            pages_resident=b.pages_resident,
            bytes_locked=b.pages_mapped * PAGE_SIZE,
            key_bytes=used_bytes,
            slots=classes,
            memlock=memlock,
            memcg=_procfs.memcg(),
            hibernation_inhibited=b.hibernation_inhibited,
            direct_map=b.direct_map,
            extra=b.extra,
        )


def _memlock_stats(
    classes: tuple[SizeClassStats, ...], spare_pages: int, key_sizes: Mapping[str, int]
) -> MemlockStats:
    soft, hard = _sys.memlock_rlimit()
    locked = _sys.vm_locked_bytes()
    cap = _procfs.has_cap_ipc_lock()
    headroom: int | None = None if (soft < 0 or cap) else max(0, soft - locked)
    by_size = {c.size: c.slots_free for c in classes}
    keys: list[tuple[str, int | None]] = []
    for key_type, nbytes in key_sizes.items():
        cls = size_class(nbytes)
        if headroom is None:
            keys.append((key_type, None))
            continue
        # free slots already mapped, plus what the remaining limit can map
        per_page = PAGE_SIZE // cls
        keys.append(
            (key_type, by_size[cls] + (spare_pages + headroom // PAGE_SIZE) * per_page)
        )
    return MemlockStats(
        soft=soft,
        hard=hard,
        locked=locked,
        cap_ipc_lock=cap,
        headroom_bytes=headroom,
        headroom_keys=tuple(keys),
    )
