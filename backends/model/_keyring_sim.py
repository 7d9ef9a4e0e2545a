"""One process's keyring, packed the way the slot allocator packs it, without the bytes.

Keys are packed the way :class:`secretvault.backends.SlotAllocator` packs them (64
Ed25519 keys per page, regions growing by 1/16 of what is mapped between
16 and 256 pages, pages first touched when carved, the fullest page first,
empty regions given back beyond a reserve of one);
:class:`KeyringSim` re-implements that policy without real memory so the
scenarios run unprivileged and fast, and a unit test
(``tests/unit/backends/model/test_keyring_sim.py``) holds it to the real allocator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from secretvault.api.errors import MemlockExceeded
from secretvault.backends._slots import SIZE_CLASSES, size_class
from secretvault.backends.model._directmap import PAGE_BYTES
from secretvault.backends.model._machine import ModelProcess, SecretFile, SecretmemDesign

ED25519_SLOT = 64
SLOTS_PER_PAGE = PAGE_BYTES // ED25519_SLOT


@dataclass(eq=False)
class _SimRegion:
    file: SecretFile
    next_untouched: int = 0
    free_pages: list[int] = field(default_factory=list)
    pages_in_use: int = 0


@dataclass(eq=False)
class SimPage:
    region: _SimRegion
    index: int
    size: int  # the page's size class
    used: int = 0

    @property
    def slots(self) -> int:
        return PAGE_BYTES // self.size


class KeyringSim:
    """One process's keyring, packed like SlotAllocator.

    Mirrors ``backends/_slots.py`` with its defaults (min 16, max 256 pages
    per region, one empty region kept): a key's size rounds up to its size
    class (32, 64, 128, 256 bytes) and each page holds one class; a new
    region is ``mapped // 16`` pages clamped to [16, 256], halved on
    MemlockExceeded; a page is faulted when first carved; a key goes to the
    fullest partial page of its class, else to a page of the first region
    with one (its most recently emptied page, else its next untouched one);
    a page with no used slot goes back to its region's free list; a region
    with no page in use is unmapped when more than one such region exists.
    ``tests/unit/backends/model/test_keyring_sim.py`` holds the two to the
    same packing, key by key.
    """

    def __init__(
        self,
        design: SecretmemDesign,
        process: ModelProcess,
        *,
        slot_size: int = ED25519_SLOT,
        min_region_pages: int = 16,
        max_region_pages: int = 256,
        reserve_regions: int = 1,
    ) -> None:
        self.design = design
        self.process = process
        self.slot_size = slot_size  # what add() stores when given no size
        self._min = min_region_pages
        self._max = max_region_pages
        self._reserve = reserve_regions
        self.regions: list[_SimRegion] = []
        # per size class, partial pages bucketed by used slots: the fullest
        # is found at once
        self._partial: dict[int, list[dict[SimPage, None]]] = {}
        self._clear_partial()
        self.keys = 0
        self.region_sizes: list[int] = []  # every region asked for, in order

    def _clear_partial(self) -> None:
        self._partial = {c: [{} for _ in range(PAGE_BYTES // c)] for c in SIZE_CLASSES}

    def add(self, size: int | None = None) -> SimPage:
        """Store one key of ``size`` bytes (default ``slot_size``); its page.

        Raises what the design raises.
        """
        cls = size_class(self.slot_size if size is None else size)
        page = self._page_with_room(cls)
        buckets = self._partial[cls]
        del buckets[page.used][page]
        page.used += 1
        if page.used < page.slots:
            buckets[page.used][page] = None
        self.keys += 1
        return page

    def _page_with_room(self, cls: int) -> SimPage:
        for bucket in reversed(self._partial[cls]):
            if bucket:
                return next(iter(bucket))
        state = next(
            (r for r in self.regions if r.free_pages or r.next_untouched < r.file.pages), None
        )
        if state is None:
            state = self._new_region()
        if state.free_pages:
            index = state.free_pages.pop()
        else:
            index = state.next_untouched
            # first carve of this page: the first touch, the page fault
            self.design.fault(state.file, index)
            state.next_untouched += 1
        state.pages_in_use += 1
        page = SimPage(state, index, cls)
        self._partial[cls][0][page] = None
        return page

    def _new_region(self) -> _SimRegion:
        mapped = sum(r.file.pages for r in self.regions)
        pages = max(self._min, min(self._max, mapped // 16))
        while True:
            try:
                f = self.design.mmap(self.process, pages)
                break
            except MemlockExceeded:
                if pages == 1:
                    raise
                pages //= 2
        self.region_sizes.append(pages)
        state = _SimRegion(f)
        self.regions.append(state)
        return state

    def remove(self, page: SimPage) -> None:
        """Delete one key stored in ``page``."""
        buckets = self._partial[page.size]
        if page.used < page.slots:  # a full page is in no bucket
            del buckets[page.used][page]
        page.used -= 1
        self.keys -= 1
        if page.used:
            buckets[page.used][page] = None
            return
        state = page.region
        state.pages_in_use -= 1
        state.free_pages.append(page.index)
        if state.pages_in_use == 0:
            empty = sum(1 for r in self.regions if r.pages_in_use == 0)
            if empty > self._reserve:
                self.regions.remove(state)
                self.design.release(state.file)

    def close(self) -> None:
        for state in self.regions:
            self.design.release(state.file)
        self.regions.clear()
        self._clear_partial()
