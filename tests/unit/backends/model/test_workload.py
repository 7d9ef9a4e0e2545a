"""The background workload: seeded, near its target, and fragmenting."""

from __future__ import annotations

import pytest

from secretvault.backends.model import Machine, PageByPageDesign, WorkloadConfig

MiB = 1 << 20


def secret_frames(seed: int, config: WorkloadConfig | None = None) -> list[int]:
    m = Machine(memory_bytes=512 * MiB, seed=seed, workload=config)
    d = PageByPageDesign(m)
    f = d.mmap(m.spawn(memlock_limit=None), 3000)
    return [d.fault(f, i) for i in range(3000)]


def test_same_seed_same_frames_different_seed_different_frames() -> None:
    assert secret_frames(7) == secret_frames(7)
    assert secret_frames(7) != secret_frames(8)


def test_occupancy_stays_near_the_target() -> None:
    m = Machine(memory_bytes=512 * MiB, workload=WorkloadConfig(occupancy=0.5))
    w = m.workload
    for _ in range(20_000):
        w.step()
    assert abs(w.held / m.phys.pages - 0.5) < 0.05
    assert w.failures == 0


def test_background_spreads_secret_pages_over_more_regions() -> None:
    quiet = secret_frames(1, WorkloadConfig(occupancy=0.0, ops_per_fault=0))
    busy = secret_frames(1, WorkloadConfig(occupancy=0.6, ops_per_fault=2.0))
    assert len({p // 512 for p in quiet}) == 6  # 3000 pages, whole pageblocks
    assert len({p // 512 for p in busy}) > 6


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError):
        WorkloadConfig(occupancy=0.99)
    with pytest.raises(ValueError):
        WorkloadConfig(unmovable_share=0.7, reclaimable_share=0.5)
    with pytest.raises(ValueError):
        WorkloadConfig(ops_per_fault=-1)
