"""The buddy allocator: migrate types, per-CPU lists, fallback, CMA."""

from __future__ import annotations

import pytest

from secretvault.backends.model import (
    CMA,
    MOVABLE,
    PAGEBLOCK_PAGES,
    RECLAIMABLE,
    UNMOVABLE,
    PhysicalMemory,
)


def test_boot_state_every_pageblock_free_and_movable_cma_on_top() -> None:
    pm = PhysicalMemory(64 * PAGEBLOCK_PAGES, cma_pages=8 * PAGEBLOCK_PAGES)
    assert pm.free_pages() == pm.pages
    assert pm.pageblocks_by_type() == (0, 56, 0, 8)
    assert pm.cma_start == 56 * PAGEBLOCK_PAGES
    assert pm.pageblock_type(pm.pages - 1) == CMA


def test_consecutive_order0_allocations_get_consecutive_frames() -> None:
    pm = PhysicalMemory(16 * PAGEBLOCK_PAGES)
    frames = [pm.alloc(0, UNMOVABLE) for _ in range(200)]
    assert frames == list(range(frames[0], frames[0] + 200))
    # the first unmovable allocation claimed a whole free movable pageblock
    assert pm.pageblock_type(frames[0]) == UNMOVABLE
    assert pm.pageblocks_by_type()[UNMOVABLE] == 1


def test_free_merges_buddies_back_to_whole_pageblocks() -> None:
    pm = PhysicalMemory(8 * PAGEBLOCK_PAGES, pcp_high=0)
    held = [(pm.alloc(o, MOVABLE), o) for o in (0, 3, 1, 9, 0, 2) * 3]
    assert all(p >= 0 for p, _ in held)
    for p, o in held:
        pm.free(p, o, MOVABLE)
    pm.drain_pcp()
    assert pm.free_pages() == pm.pages
    assert pm.nr_free[MOVABLE] == pm.pages
    assert all(pm.is_free(b * PAGEBLOCK_PAGES) for b in range(pm.pageblocks))


def test_a_freed_page_is_the_next_one_handed_out() -> None:
    pm = PhysicalMemory(8 * PAGEBLOCK_PAGES)
    a = [pm.alloc(0, UNMOVABLE) for _ in range(10)]
    pm.free(a[3], 0, UNMOVABLE)
    # per-CPU lists are LIFO: the page just freed comes back first
    assert pm.alloc(0, UNMOVABLE) == a[3]


def test_pcp_refills_in_batches_and_spills_past_high() -> None:
    pm = PhysicalMemory(8 * PAGEBLOCK_PAGES, pcp_batch=10, pcp_high=20)
    pm.alloc(0, MOVABLE)
    assert pm.pcp_pages() == 9  # one batch of 10, one handed out
    frames = [pm.alloc(0, MOVABLE) for _ in range(40)]
    for p in frames:
        pm.free(p, 0, MOVABLE)
    assert pm.pcp_pages() <= 20 + 10


def test_unmovable_claims_a_mostly_free_block_and_steals_from_a_full_one() -> None:
    pm = PhysicalMemory(2 * PAGEBLOCK_PAGES, pcp_high=0)
    # fill block 0 with movable pages except a few holes; block 1 stays free
    movable = [pm.alloc(0, MOVABLE) for _ in range(PAGEBLOCK_PAGES)]
    assert {p // PAGEBLOCK_PAGES for p in movable} == {0}
    for p in movable[:4]:
        pm.free(p, 0, MOVABLE)
    pm.drain_pcp()
    # claim: the largest fallback block first -- all of block 1, retyped
    u = pm.alloc(1, UNMOVABLE)
    assert u // PAGEBLOCK_PAGES == 1
    assert pm.pageblock_type(u) == UNMOVABLE
    # drain block 1 so only block 0's four holes are left
    rest = []
    while (p := pm.alloc(1, UNMOVABLE)) >= 0 and p // PAGEBLOCK_PAGES == 1:
        rest.append(p)
    # block 0 is full of movable pages: the holes are stolen, type unchanged
    assert p // PAGEBLOCK_PAGES == 0
    assert pm.pageblock_type(0) == MOVABLE


def test_unmovable_and_reclaimable_never_use_cma() -> None:
    pm = PhysicalMemory(4 * PAGEBLOCK_PAGES, cma_pages=2 * PAGEBLOCK_PAGES, pcp_batch=1)
    got = [pm.alloc(0, UNMOVABLE) for _ in range(2 * PAGEBLOCK_PAGES)]
    assert all(0 <= p < pm.cma_start for p in got)
    assert pm.alloc(0, UNMOVABLE) == -1
    assert pm.alloc(0, RECLAIMABLE) == -1
    assert pm.nr_free[CMA] == 2 * PAGEBLOCK_PAGES
    # a movable allocation may use the CMA area
    assert pm.alloc(0, MOVABLE) >= pm.cma_start


def test_movable_prefers_cma_when_it_holds_most_free_memory() -> None:
    pm = PhysicalMemory(4 * PAGEBLOCK_PAGES, cma_pages=3 * PAGEBLOCK_PAGES)
    assert pm.alloc(3, MOVABLE) >= pm.cma_start


def test_cma_alloc_migrates_movable_pages_out_and_release_gives_the_chunk_back() -> None:
    pm = PhysicalMemory(8 * PAGEBLOCK_PAGES, cma_pages=2 * PAGEBLOCK_PAGES)
    moved: list[tuple[int, int, int]] = []
    pm.migration_hook = lambda old, new, order: moved.append((old, new, order))
    # movable allocations use regular memory until CMA holds more than half
    # of what is free, then CMA too
    regular: list[int] = []
    in_cma: list[int] = []
    while len(in_cma) < 5:
        p = pm.alloc(2, MOVABLE)
        (in_cma if p >= pm.cma_start else regular).append(p)
    assert pm.nr_free[MOVABLE] > 0  # room left to migrate into
    chunk = pm.cma_alloc()
    assert chunk == pm.cma_start
    # every movable allocation that sat in the chunk moved to regular memory
    assert [old for old, _, _ in moved] == sorted(p for p in in_cma if p < chunk + 512)
    assert all(new < pm.cma_start for _, new, _ in moved)
    assert pm.cma_migrations == len(moved)
    assert pm.cma_chunks_free == 1
    pm.cma_release(chunk)
    assert pm.cma_chunks_free == 2
    with pytest.raises(ValueError):
        pm.cma_release(chunk)


def test_cma_alloc_fails_when_drained() -> None:
    pm = PhysicalMemory(8 * PAGEBLOCK_PAGES, cma_pages=2 * PAGEBLOCK_PAGES)
    a, b = pm.cma_alloc(), pm.cma_alloc()
    assert {a, b} == {pm.cma_start, pm.cma_start + PAGEBLOCK_PAGES}
    assert pm.cma_alloc() == -1
    assert pm.cma_failures == 1
    pm.cma_release(a)
    assert pm.cma_alloc() == a


def test_sizes_are_whole_pageblocks() -> None:
    pm = PhysicalMemory(3 * PAGEBLOCK_PAGES + 100, cma_pages=PAGEBLOCK_PAGES + 7)
    assert (pm.pages, pm.cma_pages) == (3 * PAGEBLOCK_PAGES, PAGEBLOCK_PAGES)
    with pytest.raises(ValueError):
        PhysicalMemory(100)
    with pytest.raises(ValueError):
        PhysicalMemory(2 * PAGEBLOCK_PAGES, cma_pages=2 * PAGEBLOCK_PAGES)


def test_free_2m_blocks_counts_whole_free_pageblocks_cma_apart() -> None:
    pm = PhysicalMemory(16 * PAGEBLOCK_PAGES, cma_pages=4 * PAGEBLOCK_PAGES, pcp_high=0)
    assert pm.free_2m_blocks() == 12 and pm.free_2m_blocks(cma=True) == 16
    page = pm.alloc(0, UNMOVABLE)  # a batch of the pcp refill splits one block
    assert pm.free_2m_blocks() == 11
    block = pm.alloc(9, UNMOVABLE)  # a whole block, claimed from movable
    assert pm.free_2m_blocks() == 10 and pm.pageblock_type(block) == UNMOVABLE
    pm.free(block, 9, UNMOVABLE)
    pm.free(page, 0, UNMOVABLE)
    pm.drain_pcp()
    assert pm.free_2m_blocks() == 12  # the buddies merged back
