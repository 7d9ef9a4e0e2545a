"""The direct-map rules, each pinned: splits one level at a time, whole
2 MiB changes without a level-2 split, and no merging back."""

from __future__ import annotations

import pytest

from secretvault.backends.model import DirectMap

GIB_PAGES = 1 << 18
MB2_PAGES = 512
KiB = 1024
MiB = 1 << 20
GiB = 1 << 30


def counters(dm: DirectMap) -> tuple[int, int, int, int, int]:
    return dm.level2_splits, dm.level3_splits, dm.bytes_4k, dm.bytes_2m, dm.bytes_1g


def test_boot_layout_uses_the_largest_entries() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    # first 2 MiB at 4 KiB (the first megabyte is mapped on its own), the
    # rest of the first GiB at 2 MiB, every whole aligned GiB at 1 GiB
    assert (dm.bytes_4k, dm.bytes_2m, dm.bytes_1g) == (2 * MiB, 1022 * MiB, 3 * GiB)
    assert (dm.level2_splits, dm.level3_splits) == (0, 0)


def test_from_ranges_maps_holes_and_unaligned_ends_like_split_mem_range() -> None:
    # RAM [0, 640 KiB) and [1 MiB, 3 GiB), a hole, then [4 GiB, 5 GiB + 3 MiB)
    ranges = [(0, 160), (256, 3 * GIB_PAGES), (4 * GIB_PAGES, 5 * GIB_PAGES + 768)]
    dm = DirectMap.from_ranges(ranges)
    assert dm.bytes_1g == 3 * GiB  # [1G, 3G) and [4G, 5G)
    assert dm.bytes_2m == 1022 * MiB + 2 * MiB  # [2M, 1G) and [5G, 5G + 2M)
    assert dm.bytes_4k == 640 * KiB + 1 * MiB + 1 * MiB  # low, [1M, 2M), the tail
    with pytest.raises(ValueError, match="not in the direct map"):
        dm.invalidate_page(3 * GIB_PAGES + 5)  # the hole


def test_one_page_inside_a_1g_entry_gives_one_level3_and_one_level2_split() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    before = counters(dm)
    dm.invalidate_page(2 * GIB_PAGES + 12345)
    l2, l3, b4k, b2m, b1g = counters(dm)
    assert (l2, l3) == (1, 1)
    # the GiB moved to 2 MiB entries, then one 2 MiB entry to 4 KiB entries
    assert b1g == before[4] - GiB
    assert b2m == before[3] + GiB - 2 * MiB
    assert b4k == before[2] + 2 * MiB
    assert not dm.is_present(2 * GIB_PAGES + 12345)


def test_more_pages_in_the_same_2m_region_split_nothing_more() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    base = 2 * GIB_PAGES + 7 * MB2_PAGES
    dm.invalidate_page(base)
    after_first = counters(dm)
    for p in range(base + 1, base + MB2_PAGES):
        dm.invalidate_page(p)
    assert counters(dm) == after_first


def test_another_2m_region_of_the_same_gib_is_one_level2_split_only() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    dm.invalidate_page(2 * GIB_PAGES)
    dm.invalidate_page(2 * GIB_PAGES + 3 * MB2_PAGES)
    assert (dm.level2_splits, dm.level3_splits) == (2, 1)


def test_a_whole_aligned_2m_chunk_gives_no_level2_split() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    b4k = dm.bytes_4k
    dm.invalidate_2m(3 * GIB_PAGES + 5 * MB2_PAGES)
    assert dm.level2_splits == 0
    assert dm.level3_splits == 1  # its 1 GiB parent still had to split
    assert dm.bytes_4k == b4k
    assert dm.pages_invalid == MB2_PAGES
    # and a second chunk in the same GiB costs nothing at all
    dm.invalidate_2m(3 * GIB_PAGES + 6 * MB2_PAGES)
    assert (dm.level2_splits, dm.level3_splits) == (0, 1)


def test_a_2m_chunk_in_a_region_already_at_4k_needs_no_split() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    dm.invalidate_page(GIB_PAGES + 10)
    dm.restore_page(GIB_PAGES + 10)
    before = counters(dm)
    dm.invalidate_2m(GIB_PAGES)
    assert counters(dm) == before
    assert dm.pages_invalid == MB2_PAGES


def test_chunk_rejects_unaligned_and_double_removal() -> None:
    dm = DirectMap.boot(2 * GIB_PAGES)
    with pytest.raises(ValueError, match="aligned"):
        dm.invalidate_2m(GIB_PAGES + 1)
    dm.invalidate_2m(GIB_PAGES)
    with pytest.raises(ValueError, match="already removed"):
        dm.invalidate_2m(GIB_PAGES)
    with pytest.raises(ValueError, match="already removed"):
        dm.invalidate_page(GIB_PAGES + 3)


def test_double_invalidate_and_restore_are_errors() -> None:
    dm = DirectMap.boot(2 * GIB_PAGES)
    dm.invalidate_page(GIB_PAGES + 1)
    with pytest.raises(ValueError, match="already out"):
        dm.invalidate_page(GIB_PAGES + 1)
    dm.restore_page(GIB_PAGES + 1)
    with pytest.raises(ValueError, match="already"):
        dm.restore_page(GIB_PAGES + 1)


def test_splits_are_never_undone() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    pages = [GIB_PAGES + i * 700 for i in range(50)]
    for p in pages:
        dm.invalidate_page(p)
    dm.invalidate_2m(3 * GIB_PAGES)
    split = counters(dm)
    for p in pages:
        dm.restore_page(p)
    dm.restore_2m(3 * GIB_PAGES)
    # every page is back, every counter and DirectMap figure stays
    assert dm.pages_invalid == 0
    assert counters(dm) == split
    assert dm.is_split_2m(pages[0]) and dm.is_split_1g(pages[0])
    # and taking the same pages out again splits nothing new
    for p in pages:
        dm.invalidate_page(p)
    assert counters(dm) == split


def test_mark_split_records_earlier_splits_without_counting_them() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    dm.mark_split([2 * GIB_PAGES + 1])
    assert (dm.level2_splits, dm.level3_splits) == (0, 0)
    assert dm.is_split_2m(2 * GIB_PAGES)
    assert dm.replay([2 * GIB_PAGES + 2, 2 * GIB_PAGES + MB2_PAGES]) == (1, 0)


def test_replay_counts_one_split_per_distinct_2m_region() -> None:
    dm = DirectMap.boot(4 * GIB_PAGES)
    frames = [GIB_PAGES + r * MB2_PAGES + i for r in range(10) for i in range(0, 500, 7)]
    frames += [3 * GIB_PAGES + 4]
    assert dm.replay(frames) == (11, 2)
