"""The two designs' rules: where pages come from and what they cost."""

from __future__ import annotations

import pytest

from secretvault.api.errors import MemlockExceeded, PoolExhausted, SecretMemoryExhausted
from secretvault.backends.model import (
    QUIET,
    Machine,
    OomKilled,
    PageByPageDesign,
    PooledPmdDesign,
    WorkloadConfig,
)

MiB = 1 << 20
PAGE = 4096


def quiet_machine(*, memory: int = 2048 * MiB, cma: int = 0) -> Machine:
    return Machine(memory_bytes=memory, cma_bytes=cma, workload=QUIET)


# --- shared: the mmap-time rlimit -------------------------------------------------


@pytest.mark.parametrize("design", [PageByPageDesign, PooledPmdDesign])
def test_mlock_rlimit_is_charged_whole_at_mmap_before_any_fault(design: type) -> None:
    m = quiet_machine(cma=64 * MiB)
    d = design(m)
    proc = m.spawn(memlock_limit=16 * PAGE)
    f = d.mmap(proc, 10)
    assert proc.locked_vm == 10 * PAGE  # charged, nothing faulted yet
    assert d.faults == 0 and m.mlocked == 0
    with pytest.raises(MemlockExceeded, match=r"RLIMIT_MEMLOCK 65536 bytes, 40960 bytes locked"):
        d.mmap(proc, 7)
    assert proc.locked_vm == 10 * PAGE  # the refused mmap charged nothing
    d.mmap(proc, 6)  # exactly up to the limit is allowed
    d.release(f)
    assert proc.locked_vm == 6 * PAGE


@pytest.mark.parametrize("design", [PageByPageDesign, PooledPmdDesign])
def test_no_limit_means_unlimited(design: type) -> None:
    m = quiet_machine(cma=64 * MiB)
    proc = m.spawn(memlock_limit=None)
    design(m).mmap(proc, 100_000)
    assert proc.locked_vm == 100_000 * PAGE


# --- page-by-page ----------------------------------------------------------------------


def test_page_by_page_charges_memcg_per_page_and_splits_per_region() -> None:
    m = quiet_machine()
    d = PageByPageDesign(m)
    proc = m.spawn(memcg="/a")
    f = d.mmap(proc, 100)
    for i in range(37):
        d.fault(f, i)
    cg = m.memcg("/a")
    assert cg.charged == cg.used == 37 * PAGE
    assert d.charged == 37 * PAGE and d.peak_overcharge == 0
    assert m.mlocked == m.unevictable == 37 * PAGE
    assert d.pool_waste_pages() == 0
    # on an empty machine the pages are consecutive in one pageblock:
    # one 2 MiB region, one level-2 split (and one level-3 above it)
    frames = [p for p in f.frames if p >= 0]
    assert len({p // 512 for p in frames}) == 1
    assert m.direct_map.level2_splits == 1
    assert d.fault(f, 3) == frames[3]  # a second touch is no new fault
    assert d.faults == 37


def test_page_by_page_release_uncharges_and_keeps_the_splits() -> None:
    m = quiet_machine()
    d = PageByPageDesign(m)
    proc = m.spawn()
    f = d.mmap(proc, 600)
    for i in range(600):
        d.fault(f, i)
    splits = (m.direct_map.level2_splits, m.direct_map.level3_splits)
    assert splits[0] == 2  # 600 pages: two pageblocks
    d.release(f)
    assert proc.memcg.charged == proc.memcg.used == 0
    assert m.mlocked == 0 and proc.locked_vm == 0
    assert m.direct_map.pages_invalid == 0
    assert (m.direct_map.level2_splits, m.direct_map.level3_splits) == splits


def test_page_by_page_out_of_memory_is_a_typed_failure() -> None:
    m = Machine(memory_bytes=32 * MiB, workload=QUIET)
    usable = m.phys.pages - m.phys.reserved_pages
    d = PageByPageDesign(m)
    f = d.mmap(m.spawn(memlock_limit=None), usable + 10)
    with pytest.raises(SecretMemoryExhausted, match="no free page"):
        for i in range(usable + 10):
            d.fault(f, i)
    assert d.faults == usable and d.failures == 1


# --- pooled ------------------------------------------------------------------------------


def test_pooled_takes_a_whole_chunk_charged_whole_with_no_level2_split() -> None:
    m = quiet_machine(cma=8 * MiB)
    d = PooledPmdDesign(m)
    proc = m.spawn(memcg="/t")
    f = d.mmap(proc, 600)
    d.fault(f, 0)
    cg = m.memcg("/t")
    assert cg.charged == 2 * MiB and cg.used == PAGE  # the chunk, charged whole
    assert d.pool_waste_pages() == 511
    assert d.peak_overcharge == 2 * MiB - PAGE
    assert m.direct_map.level2_splits == 0
    assert m.direct_map.level3_splits == 1
    assert f.frames[0] == m.phys.cma_start
    for i in range(1, 512):
        d.fault(f, i)
    assert m.phys.cma_chunks_free == 3  # 512 pages: still one chunk
    assert d.pool_waste_pages() == 0
    d.fault(f, 512)
    assert m.phys.cma_chunks_free == 2
    assert cg.charged == 4 * MiB
    assert m.direct_map.level2_splits == 0
    assert m.mlocked == 513 * PAGE  # Mlocked still counts faulted pages only


def test_every_file_has_its_own_pool() -> None:
    m = quiet_machine(cma=8 * MiB)
    d = PooledPmdDesign(m)
    files = [d.mmap(m.spawn(), 1) for _ in range(3)]
    for f in files:
        d.fault(f, 0)
    assert m.phys.cma_chunks_free == 1
    assert d.pool_waste_pages() == 3 * 511


def test_pool_fails_when_cma_is_drained() -> None:
    # the backend's variant: the same fault refused, nobody killed
    m = quiet_machine(cma=4 * MiB)
    d = PooledPmdDesign(m, kill_on_oom=False)
    a, b, c = (d.mmap(m.spawn(), 1) for _ in range(3))
    d.fault(a, 0)
    d.fault(b, 0)
    drained = r"2 of its 2 chunks of 2 MiB \(4 MiB\).*fallback is off"
    with pytest.raises(PoolExhausted, match=drained):
        d.fault(c, 0)
    assert d.failures == 1 and c.faulted == 0
    # plenty of ordinary memory was free: only the pool was empty
    assert m.phys.free_pages() > 100_000
    d.release(a)  # the chunk goes back to CMA, whole
    assert d.fault(c, 0) == m.phys.cma_start
    assert m.direct_map.level2_splits == 0


def test_v16_drained_pool_is_vm_fault_oom_and_the_faulting_process_is_killed() -> None:
    """v16 had no fallback: secretmem_fault returned VM_FAULT_OOM, the fault
    path's OOM killer ended the process, and its exit gave its chunks back."""
    m = quiet_machine(cma=6 * MiB)
    d = PooledPmdDesign(m)
    holder, victim = m.spawn(memcg="/h"), m.spawn(memcg="/v")
    a = d.mmap(holder, 1)
    d.fault(a, 0)
    small, big = d.mmap(victim, 1), d.mmap(victim, 600)
    d.fault(small, 0)
    for i in range(512):
        d.fault(big, i)  # the third and last chunk
    assert m.phys.cma_chunks_free == 0
    killed = rf"VM_FAULT_OOM.*killed model process {victim.pid} \(SIGKILL\)"
    with pytest.raises(OomKilled, match=killed):
        d.fault(big, 512)  # needs a fourth chunk: none
    assert victim.killed and not holder.killed
    assert d.oom_kills == 1 and d.failures == 1
    # its exit released both its files: two chunks back, charges gone
    assert small.closed and big.closed and not a.closed
    assert m.phys.cma_chunks_free == 2 and d.chunks_held == 1
    assert m.memcg("/v").charged == m.memcg("/v").used == 0
    assert victim.locked_vm == 0 and m.direct_map.pages_invalid == 512
    assert dict(d.extra())["oom_kills"] == 1.0
    with pytest.raises(ValueError, match="was killed"):
        d.mmap(victim, 1)  # a dead process maps nothing
    # the others go on: the freed chunks serve the next fault
    c = d.mmap(m.spawn(), 1)
    assert d.fault(c, 0) == m.phys.cma_start + 512


def test_fallback_gives_order0_pages_with_their_own_split_and_charge() -> None:
    m = quiet_machine(cma=2 * MiB)
    d = PooledPmdDesign(m, fallback=True)
    a, b = d.mmap(m.spawn(memcg="/a"), 1), d.mmap(m.spawn(memcg="/b"), 3)
    d.fault(a, 0)
    for i in range(3):
        d.fault(b, i)  # CMA drained: order-0 pages instead
    assert d.failures == 0
    assert d.fallback_pages == 3
    assert all(p < m.phys.cma_start for p in b.frames)
    assert m.memcg("/b").charged == 3 * PAGE  # per page, like page-by-page
    assert m.direct_map.level2_splits == 1  # the fallback pages' region
    assert d.pool_waste_pages() == 511  # a's chunk only
    d.release(b)
    assert d.fallback_pages == 0 and m.memcg("/b").charged == 0
    assert m.direct_map.pages_invalid == 512  # a's chunk is still out


def test_release_returns_chunks_and_restores_the_direct_map_whole() -> None:
    m = quiet_machine(cma=4 * MiB)
    d = PooledPmdDesign(m)
    proc = m.spawn(memcg="/x")
    f = d.mmap(proc, 700)
    for i in range(700):
        d.fault(f, i)
    d.release(f)
    assert m.phys.cma_chunks_free == 2
    assert proc.memcg.charged == 0 and d.charged == 0
    assert m.direct_map.pages_invalid == 0
    assert m.direct_map.level2_splits == 0
    assert d.pool_waste_pages() == 0
    assert d.peak_waste_pages == 511  # right after the first chunk


def test_cma_pages_used_by_movable_memory_are_migrated_for_the_pool() -> None:
    m = Machine(
        memory_bytes=64 * MiB,
        cma_bytes=16 * MiB,
        workload=WorkloadConfig(occupancy=0.4, ops_per_fault=0),
    )
    assert any(m.phys._cma_movable.values())  # the background spilled into CMA
    d = PooledPmdDesign(m)
    f = d.mmap(m.spawn(memlock_limit=None), 8 * 512)
    for i in range(8 * 512):
        d.fault(f, i)
    assert m.phys.cma_migrations > 0
    assert m.phys.cma_chunks_free == 0


def test_cma_chunks_whose_pages_cannot_move_are_reported() -> None:
    # the background holds more than the memory outside CMA: nowhere to
    # migrate to, so some chunks cannot be cleared (cma_alloc's -EBUSY)
    m = Machine(
        memory_bytes=64 * MiB,
        cma_bytes=16 * MiB,
        workload=WorkloadConfig(occupancy=0.8, ops_per_fault=0),
    )
    d = PooledPmdDesign(m)
    f = d.mmap(m.spawn(memlock_limit=None), 8 * 512)
    with pytest.raises(PoolExhausted, match="could not be cleared of movable pages"):
        for i in range(8 * 512):
            d.fault(f, i)
    assert d.chunks_held < 8
