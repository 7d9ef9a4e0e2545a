"""The x86-64 kernel direct map, as page-table entries of three sizes.

Kernel behaviour this models (``arch/x86/mm/init.c``,
``arch/x86/mm/pat/set_memory.c``):

* At boot every RAM range is mapped with the largest entries that fit
  (``split_mem_range``): 4 KiB up to the first 2 MiB boundary, 2 MiB up to
  the first 1 GiB boundary, 1 GiB entries in the aligned middle, then 2 MiB
  and 4 KiB for the tail.  The first megabyte is mapped on its own with
  4 KiB entries.
* Removing one 4 KiB page (``set_direct_map_invalid_noflush``) splits the
  1 GiB entry covering it into 2 MiB entries -- a *level-3 split* -- and then
  that 2 MiB entry into 4 KiB entries -- a *level-2 split*: one level at a
  time, each counted in ``/proc/vmstat`` (``direct_map_level3_splits``,
  ``direct_map_level2_splits``) and each moving bytes between
  ``DirectMap1G``/``DirectMap2M``/``DirectMap4k`` in ``/proc/meminfo``.
* A change covering a whole aligned 2 MiB entry is made on that entry in
  place: the 1 GiB parent is split, the 2 MiB entry is not.  This is what
  the v16 pool of 2 MiB chunks relied on.
* Putting a page back (``set_direct_map_default_noflush``) never merges
  entries again: for secret memory splits are permanent until reboot (the
  collapse counters only move for ``set_memory_rox``).
* ``DirectMap4k`` counts bytes *covered* by 4 KiB entries, present or not:
  invalidating a page in an already split region changes no counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAGES_PER_2M = 512
PAGES_PER_1G = 512 * 512
PAGE_BYTES = 4096
BYTES_2M = PAGES_PER_2M * PAGE_BYTES
BYTES_1G = PAGES_PER_1G * PAGE_BYTES
ISA_END_PFN = 256  # the first megabyte, mapped on its own at 4 KiB

# state of each 2 MiB region (``_l2``) and 1 GiB region (``_l1``)
_HOLE = 0  # not mapped at all
_SPLIT = 1  # 2 MiB region: 4 KiB entries; 1 GiB region: no 1 GiB entry
_ENTRY = 2  # 2 MiB region: one 2 MiB entry; 1 GiB region: one 1 GiB entry
_UNDER_1G = 3  # 2 MiB region covered by its 1 GiB parent entry


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def _round_down(x: int, a: int) -> int:
    return x // a * a


class DirectMap:
    """Direct-map entries over frames ``[0, span_pages)``.

    Build one with :meth:`boot` (a machine whose RAM starts at 0) or
    :meth:`from_ranges` (the RAM ranges of a real machine).
    """

    def __init__(self, span_pages: int) -> None:
        span_pages = _round_up(span_pages, PAGES_PER_2M)
        self.span_pages = span_pages
        self._l2 = bytearray(span_pages // PAGES_PER_2M)
        self._l1 = bytearray(_round_up(span_pages, PAGES_PER_1G) // PAGES_PER_1G)
        self._invalid = bytearray(span_pages)  # 4 KiB entries cleared
        self._invalid_2m = bytearray(len(self._l2))  # 2 MiB entries cleared whole
        self.level2_splits = 0
        self.level3_splits = 0
        self.bytes_4k = 0
        self.bytes_2m = 0
        self.bytes_1g = 0
        self.pages_invalid = 0

    # --- construction --------------------------------------------------------

    @classmethod
    def boot(cls, pages: int, *, gbpages: bool = True) -> DirectMap:
        """The boot layout of a machine with RAM at frames ``[0, pages)``."""
        return cls.from_ranges([(0, pages)], span_pages=pages, gbpages=gbpages)

    @classmethod
    def from_ranges(
        cls,
        ranges: Iterable[tuple[int, int]],
        *,
        span_pages: int | None = None,
        gbpages: bool = True,
    ) -> DirectMap:
        """Map RAM ranges ``[start_pfn, end_pfn)`` the way x86 boot code does."""
        rs = sorted((s, e) for s, e in ranges if e > s)
        if not rs:
            raise ValueError("no RAM ranges")
        span = span_pages if span_pages is not None else rs[-1][1]
        dm = cls(span)
        pieces: list[tuple[int, int]] = []
        for s, e in rs:
            # init_mem_mapping() maps the first megabyte on its own
            if s < ISA_END_PFN:
                pieces.append((s, min(e, ISA_END_PFN)))
                s = ISA_END_PFN
            if s < e:
                pieces.append((s, e))
        for s, e in pieces:
            dm._map_range(s, e, gbpages)
        return dm

    @classmethod
    def from_layout(cls, pages: int, bytes_4k: int, bytes_2m: int) -> DirectMap:
        """A machine's boot layout by its byte counts (``DirectMap4k``/``2M``).

        4 KiB entries at the bottom, 2 MiB entries above them up to the 1 GiB
        boundary nearest their count, 1 GiB entries over every whole GiB
        above, 2 MiB for the tail: the counts are the machine's to within
        that rounding, the addresses are the model's own.
        """
        dm = cls(pages)
        top = _round_down(pages, PAGES_PER_2M)
        e4 = min(top, _round_up(bytes_4k // PAGE_BYTES, PAGES_PER_2M))
        e2 = e4 + bytes_2m // PAGE_BYTES
        e2 = min(top, max(e4, (e2 + PAGES_PER_1G // 2) // PAGES_PER_1G * PAGES_PER_1G))
        g = _round_down(top, PAGES_PER_1G)
        dm._map_4k(0, e4)
        if e2 < g:
            dm._map_2m(e4, e2)
            dm._map_1g(e2, g)
            dm._map_2m(g, top)
        else:
            dm._map_2m(e4, top)
        return dm

    def _map_range(self, s: int, e: int, gbpages: bool) -> None:
        """``split_mem_range``: 4k head, 2M, 1G middle, 2M, 4k tail."""
        a2, b2 = _round_up(s, PAGES_PER_2M), _round_down(e, PAGES_PER_2M)
        a1, b1 = _round_up(s, PAGES_PER_1G), _round_down(e, PAGES_PER_1G)
        if a2 >= b2:
            self._map_4k(s, e)
            return
        self._map_4k(s, a2)
        if gbpages and a1 < b1:
            self._map_2m(a2, a1)
            self._map_1g(a1, b1)
            self._map_2m(b1, b2)
        else:
            self._map_2m(a2, b2)
        self._map_4k(b2, e)

    def _map_4k(self, s: int, e: int) -> None:
        if s >= e:
            return
        for m in range(s // PAGES_PER_2M, (e - 1) // PAGES_PER_2M + 1):
            self._l2[m] = _SPLIT
            self._l1[m * PAGES_PER_2M // PAGES_PER_1G] = _SPLIT
        self.bytes_4k += (e - s) * PAGE_BYTES

    def _map_2m(self, s: int, e: int) -> None:
        for m in range(s // PAGES_PER_2M, e // PAGES_PER_2M):
            self._l2[m] = _ENTRY
            self._l1[m * PAGES_PER_2M // PAGES_PER_1G] = _SPLIT
        self.bytes_2m += (e - s) * PAGE_BYTES

    def _map_1g(self, s: int, e: int) -> None:
        for g in range(s // PAGES_PER_1G, e // PAGES_PER_1G):
            self._l1[g] = _ENTRY
            first = g * (PAGES_PER_1G // PAGES_PER_2M)
            for m in range(first, first + PAGES_PER_1G // PAGES_PER_2M):
                self._l2[m] = _UNDER_1G
        self.bytes_1g += (e - s) * PAGE_BYTES

    def mark_split(self, pfns: Iterable[int]) -> None:
        """Record 2 MiB regions known to be split already, without counting.

        For a replay that starts from a real kernel's state: a region split
        before the replay began must not count as a split made by it.
        """
        for pfn in pfns:
            m = pfn // PAGES_PER_2M
            if self._l2[m] == _UNDER_1G:
                self._split_1g(pfn // PAGES_PER_1G, count=False)
            if self._l2[m] == _ENTRY:
                self._split_2m(m, count=False)

    def mark_split_1g(self, gib: int) -> None:
        """Record the 1 GiB range ``gib`` as split already, without counting."""
        if self._l1[gib] == _ENTRY:
            self._split_1g(gib, count=False)

    # --- splits --------------------------------------------------------------

    def _split_1g(self, g: int, *, count: bool = True) -> None:
        self._l1[g] = _SPLIT
        first = g * (PAGES_PER_1G // PAGES_PER_2M)
        for m in range(first, first + PAGES_PER_1G // PAGES_PER_2M):
            self._l2[m] = _ENTRY
        self.bytes_1g -= BYTES_1G
        self.bytes_2m += BYTES_1G
        if count:
            self.level3_splits += 1

    def _split_2m(self, m: int, *, count: bool = True) -> None:
        if self._invalid_2m[m]:
            # a 2 MiB entry cleared whole splits into 512 cleared PTEs
            self._invalid_2m[m] = 0
            start = m * PAGES_PER_2M
            self._invalid[start : start + PAGES_PER_2M] = b"\x01" * PAGES_PER_2M
        self._l2[m] = _SPLIT
        self.bytes_2m -= BYTES_2M
        self.bytes_4k += BYTES_2M
        if count:
            self.level2_splits += 1

    # --- invalidate / restore ---------------------------------------------------

    def invalidate_page(self, pfn: int) -> None:
        """Remove one 4 KiB page: split the levels above it as needed."""
        m = pfn >> 9
        state = self._l2[m]
        if state != _SPLIT:
            if state == _UNDER_1G:
                self._split_1g(pfn >> 18)
            elif state == _HOLE:
                raise ValueError(f"pfn {pfn:#x} is not in the direct map")
            if self._invalid_2m[m]:
                raise ValueError(f"pfn {pfn:#x} is inside a 2 MiB entry already removed")
            self._split_2m(m)
        if self._invalid[pfn]:
            raise ValueError(f"pfn {pfn:#x} is already out of the direct map")
        self._invalid[pfn] = 1
        self.pages_invalid += 1

    def restore_page(self, pfn: int) -> None:
        """Put one 4 KiB page back.  Nothing is merged."""
        if not self._invalid[pfn]:
            raise ValueError(f"pfn {pfn:#x} is in the direct map already")
        self._invalid[pfn] = 0
        self.pages_invalid -= 1

    def invalidate_2m(self, pfn: int) -> None:
        """Remove a whole aligned 2 MiB range: no level-2 split."""
        if pfn % PAGES_PER_2M:
            raise ValueError(f"pfn {pfn:#x} is not 2 MiB aligned")
        m = pfn >> 9
        state = self._l2[m]
        if state == _UNDER_1G:
            self._split_1g(pfn >> 18)
            state = _ENTRY
        if state == _ENTRY:
            if self._invalid_2m[m]:
                raise ValueError(f"2 MiB range at pfn {pfn:#x} is already removed")
            self._invalid_2m[m] = 1
            self.pages_invalid += PAGES_PER_2M
        elif state == _SPLIT:
            # already 4 KiB entries: clear each one, nothing to split
            for p in range(pfn, pfn + PAGES_PER_2M):
                self.invalidate_page(p)
        else:
            raise ValueError(f"pfn {pfn:#x} is not in the direct map")

    def restore_2m(self, pfn: int) -> None:
        m = pfn >> 9
        if self._invalid_2m[m]:
            self._invalid_2m[m] = 0
            self.pages_invalid -= PAGES_PER_2M
        else:
            for p in range(pfn, pfn + PAGES_PER_2M):
                self.restore_page(p)

    # --- inspection --------------------------------------------------------------

    def is_split_2m(self, pfn: int) -> bool:
        return self._l2[pfn >> 9] == _SPLIT

    def is_split_1g(self, pfn: int) -> bool:
        return self._l1[pfn >> 18] != _ENTRY

    def is_present(self, pfn: int) -> bool:
        return not (self._invalid[pfn] or self._invalid_2m[pfn >> 9])

    def replay(self, frames: Sequence[int]) -> tuple[int, int]:
        """Invalidate ``frames`` one by one; the (level-2, level-3) splits made."""
        l2, l3 = self.level2_splits, self.level3_splits
        for pfn in frames:
            self.invalidate_page(pfn)
        return self.level2_splits - l2, self.level3_splits - l3
