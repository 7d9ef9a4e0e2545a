"""The third design: the pool filled by plain order-9 buddy allocations
(no CMA), order 0 when no free 2 MiB block is left."""

from __future__ import annotations

from secretvault.backends.model import (
    MOVABLE,
    QUIET,
    UNMOVABLE,
    Machine,
    PmdBuddyDesign,
    WorkloadConfig,
)

MiB = 1 << 20
PAGE = 4096


def test_a_chunk_is_a_free_2m_block_charged_and_unmapped_whole() -> None:
    m = Machine(memory_bytes=256 * MiB, workload=QUIET)
    d = PmdBuddyDesign(m)
    free = m.phys.free_2m_blocks()
    assert free == (256 - 16) // 2  # all but ZONE_DMA, no CMA reserved
    proc = m.spawn(memcg="/t")
    f = d.mmap(proc, 600)
    first = d.fault(f, 0)
    assert first % 512 == 0 and m.phys.pageblock_type(first) == UNMOVABLE
    assert m.phys.free_2m_blocks() == free - 1
    assert m.memcg("/t").charged == 2 * MiB and d.pool_waste_pages() == 511
    assert m.direct_map.level2_splits == 0  # removed as one 2 MiB entry
    for i in range(1, 600):
        d.fault(f, i)
    assert d.chunks_held == 2 and d.fallback_faults == 0
    assert [n for _, n in d.free_2m_series] == [free, free - 1, free - 2]
    d.release(f)
    assert m.phys.free_2m_blocks() == free  # given back whole
    assert m.direct_map.pages_invalid == 0 and m.direct_map.level2_splits == 0
    assert m.memcg("/t").charged == 0


def test_no_free_2m_block_falls_back_to_order0_pages_with_their_own_split() -> None:
    m = Machine(memory_bytes=64 * MiB, workload=QUIET)  # 8 MiB kept as ZONE_DMA
    assert m.phys.free_2m_blocks() == (64 - 8) // 2
    m.phys.alloc(0, MOVABLE)  # someone's page cache: one block no longer whole
    d = PmdBuddyDesign(m)
    blocks = m.phys.free_2m_blocks()
    assert blocks == (64 - 8) // 2 - 1
    # one page per process, as the review's fork bomb: a block each
    files = [d.mmap(m.spawn(memcg=f"/p{i}"), 1) for i in range(blocks + 5)]
    for f in files[:blocks]:
        d.fault(f, 0)
    assert m.phys.free_2m_blocks() == 0 and d.min_free_2m == 0
    assert m.direct_map.level2_splits == 0
    for f in files[blocks:]:
        d.fault(f, 0)  # the machine has free pages, but no whole block
    assert d.failures == 0 and d.fallback_faults == 5 and d.chunk_misses == 5
    assert m.direct_map.level2_splits == 1  # the fallback pages share a region
    assert m.memcg(f"/p{blocks}").charged == PAGE  # charged per page
    extra = dict(d.extra())
    assert extra["free_2m_blocks"] == 0 and extra["fallback_faults"] == 5
    assert extra["chunk_requests"] == blocks + 5
    assert d.free_2m_series[-1] == (blocks - 1, 0)


def test_a_working_machine_has_fewer_free_blocks_and_loses_them_to_the_pools() -> None:
    m = Machine(memory_bytes=512 * MiB, seed=3, workload=WorkloadConfig(occupancy=0.5))
    empty = (512 - 16) // 2
    start = m.phys.free_2m_blocks()
    assert 0 < start < empty  # the background's pages sit in many blocks
    d = PmdBuddyDesign(m)
    files = [d.mmap(m.spawn(), 1) for _ in range(start + 50)]
    for f in files:
        d.fault(f, 0)
    assert d.min_free_2m == 0 and d.fallback_faults > 0
    counts = [n for _, n in d.free_2m_series]
    assert counts[0] == start and min(counts) == 0
