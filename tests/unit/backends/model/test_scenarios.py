"""Scenarios: the packing mirrors the slot allocator, and each scenario
shows the effect it is there to show."""

from __future__ import annotations

import random

import pytest

from secretvault.backends import SlotAllocator
from secretvault.backends.model import QUIET, Machine, PageByPageDesign, make_model_backend
from secretvault.backends.model.scenarios import (
    COMPARED,
    MODELS,
    SCENARIOS,
    KeyringSim,
    ScenarioConfig,
    run_scenario,
)
from tests.unit.backends._backends import Recording

MiB = 1 << 20


def test_keyring_sim_packs_exactly_like_the_slot_allocator() -> None:
    """The same create/delete sequence: the same regions asked for, the same
    pages touched, the same regions given back."""
    backend = Recording(
        make_model_backend(
            "page-model",
            memory_bytes=256 * MiB,
            workload=QUIET,
            memlock_limit=None,
            fault_on_allocate=False,
        )
    )
    alloc = SlotAllocator(backend)
    m = Machine(memory_bytes=256 * MiB, workload=QUIET)
    design = PageByPageDesign(m)
    sim = KeyringSim(design, m.spawn(memlock_limit=None))

    rng = random.Random(5)
    slots, pages = [], []
    for step in range(12_000):
        if step < 6000 or rng.random() < 0.4 or not slots:
            s = alloc.allocate(64)  # a first carve of a page touches it
            slots.append(s)
            pages.append(sim.add())
        else:
            i = rng.randrange(len(slots))
            slots.pop(i).free()
            sim.remove(pages.pop(i))
    # delete everything from the oldest: regions empty out and go back
    for s, p in zip(slots, pages, strict=True):
        s.free()
        sim.remove(p)

    assert sim.region_sizes == backend.allocated
    assert len(backend.freed) == sum(1 for _ in backend.allocated) - len(sim.regions)
    assert backend.inner.design.faults == design.faults
    assert sum(r.pages for r in backend.freed) == sum(sim.region_sizes) - sum(
        r.file.pages for r in sim.regions
    )
    alloc.close()


def small_cfg(**kw: object) -> ScenarioConfig:
    base: dict[str, object] = {
        "keys": 3000,
        "memory_bytes": 512 * MiB,
        "cma_bytes": 32 * MiB,
        "tenants": 32,
    }
    base.update(kw)
    return ScenarioConfig(**base)  # type: ignore[arg-type]


def test_results_repeat_with_the_seed() -> None:
    a = run_scenario("churn", "page-model", small_cfg())
    b = run_scenario("churn", "page-model", small_cfg())
    c = run_scenario("churn", "page-model", small_cfg(seed=3))
    assert a.series == b.series and a.level2_splits == b.level2_splits
    assert (a.series, a.faults) != (c.series, c.faults)


def test_pooled_never_splits_a_2m_entry_without_fallback() -> None:
    for scenario in SCENARIOS:
        r = run_scenario(scenario, "pooled-pmd-model", small_cfg())
        assert r.level2_splits == 0, scenario


def test_fork_bomb_drains_the_pool_one_chunk_per_process() -> None:
    cfg = small_cfg()  # 3000 processes, 16 chunks of CMA
    pooled = run_scenario("fork-bomb", "pooled-pmd-model", cfg)
    assert pooled.faults == 16
    assert pooled.allocation_failures == 3000 - 16
    assert pooled.peak_pool_waste_bytes == 16 * (2 * MiB - 4096)
    assert pooled.worst_memcg_charge_ratio == 512
    page = run_scenario("fork-bomb", "page-model", cfg)
    assert page.faults == 3000 and page.allocation_failures == 0
    assert page.peak_pool_waste_bytes == page.peak_memcg_overcharge_bytes == 0
    assert 0 < page.level2_splits < 3000 / 50  # pages share 2 MiB regions
    fallback = run_scenario("fork-bomb", "pooled-pmd-model+fallback", cfg)
    assert fallback.faults == 3000 and fallback.allocation_failures == 0
    assert fallback.level2_splits > 0


def test_tenants_each_hold_a_chunk() -> None:
    r = run_scenario("tenants", "pooled-pmd-model", small_cfg())
    # 32 tenants, 16 chunks: half the tenants fail on their first page
    assert r.allocation_failures == 16
    assert r.peak_pool_waste_bytes > 15 * MiB


def test_keyring_splits_grow_with_pages_on_page_by_page() -> None:
    r = run_scenario("keyring", "page-model", small_cfg(keys=64 * 2000))
    assert r.faults == 2000 and r.allocation_failures == 0
    assert r.level2_splits >= 4  # at least one split per 512 pages
    assert r.series[-1] == (r.pages_requested, r.level2_splits)
    xs = [x for x, _ in r.series]
    assert xs == sorted(xs)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        run_scenario("nope", "page-model")
    with pytest.raises(ValueError, match="unknown model"):
        run_scenario("keyring", "nope")
    assert set(MODELS) == {
        "page-model",
        "pooled-pmd-model",
        "pmd-buddy-model",
        "pooled-pmd-model+fallback",
    }


def test_v16_pool_kills_where_the_review_fallback_serves() -> None:
    cfg = small_cfg()  # 16 chunks of CMA
    v16 = run_scenario("fork-bomb", "pooled-pmd-model", cfg)
    assert v16.oom_kills == v16.allocation_failures == 3000 - 16
    # one keyring needing more chunks than CMA has: the vault itself is
    # OOM-killed on the fault that finds none, and stores nothing after
    big = small_cfg(keys=64 * 512 * 20)
    ring = run_scenario("keyring", "pooled-pmd-model", big)
    assert ring.oom_kills == ring.allocation_failures == 1
    assert ring.pages_requested == ring.faults + 1 < 512 * 16
    served = run_scenario("keyring", "pooled-pmd-model+fallback", big)
    assert served.oom_kills == 0 and served.faults == 512 * 20
    assert served.fallback_faults > 0 and served.level2_splits > 0


def test_three_designs_compared_each_run_samples_free_2m_blocks() -> None:
    assert COMPARED == ("page-model", "pooled-pmd-model", "pmd-buddy-model")
    cfg = small_cfg()
    runs = {m: run_scenario("fork-bomb", m, cfg) for m in COMPARED}
    for r in runs.values():
        start = r.free_2m_series[0]
        assert start[0] == 0 and 0 < start[1] < (512 - 16) // 2
        assert r.min_free_2m_blocks <= min(n for _, n in r.free_2m_series)
    buddy = runs["pmd-buddy-model"]
    # a whole free 2 MiB block per process while any is left, then order 0
    assert buddy.min_free_2m_blocks == 0
    assert buddy.fallback_faults > 0 and buddy.level2_splits > 0
    assert buddy.peak_pool_waste_bytes > 100 * MiB
    # page-by-page packs the same processes into few blocks
    assert runs["page-model"].min_free_2m_blocks > 0
