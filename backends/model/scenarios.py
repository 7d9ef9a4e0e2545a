"""Named scenarios, run on each design on its own freshly booted machine.

* ``keyring`` -- one vault's keyring growing to N Ed25519 keys;
* ``churn`` -- short-lived secret users (sessions holding 1-512 keys for a
  while) coming and going while the rest of the machine keeps working, until
  N keys have been created in all;
* ``tenants`` -- many tenants (own process, own memcg), each with a small
  keyring, N keys in all, growing side by side;
* ``fork-bomb`` -- the case raised in review: N processes, each mapping one
  secret page.

Three designs (:data:`MODELS`): page-by-page, the v16 pool (a drained pool
is ``VM_FAULT_OOM``: the faulting process is killed and stops), and plain
PMD-order buddy allocations with an order-0 fallback; the pool with the
fallback proposed in review is a fourth, optional variant.  Every run also
samples how many free 2 MiB blocks the machine has outside CMA.

Keys are packed the way :class:`secretvault.backends.SlotAllocator` packs them (64
Ed25519 keys per page, regions growing by 1/16 of what is mapped between
16 and 256 pages, pages first touched when carved, the fullest page first,
empty regions given back beyond a reserve of one);
:class:`KeyringSim` re-implements that policy without real memory so the
scenarios run unprivileged and fast, and a unit test holds it to the real
allocator.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from secretvault.api.errors import MemlockExceeded, SecretMemoryExhausted
from secretvault.backends._slots import SIZE_CLASSES, size_class
from secretvault.backends.model._directmap import PAGE_BYTES
from secretvault.backends.model._machine import (
    DEFAULT_CMA,
    DEFAULT_MEMORY,
    Machine,
    ModelProcess,
    SecretFile,
    SecretmemDesign,
)
from secretvault.backends.model._pagebypage import PageByPageDesign
from secretvault.backends.model._pmdbuddy import PmdBuddyDesign
from secretvault.backends.model._pooled import PooledPmdDesign
from secretvault.backends.model._workload import WorkloadConfig

ED25519_SLOT = 64
SLOTS_PER_PAGE = PAGE_BYTES // ED25519_SLOT


# --- the slot allocator's packing, without the bytes --------------------------------


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


# --- scenario runs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    keys: int = 100_000
    memory_bytes: int = DEFAULT_MEMORY
    cma_bytes: int = DEFAULT_CMA
    seed: int = 0
    workload: WorkloadConfig | None = None  # None: the default background
    tenants: int = 256
    churn_live_sessions: int = 64
    churn_idle_ops: int = 64  # background operations between session events
    samples: int = 60  # points of the splits-versus-pages series


@dataclass(frozen=True, slots=True)
class ModelResult:
    """One design's figures at the end of one scenario."""

    scenario: str
    model: str
    pages_requested: int  # secret page faults attempted
    faults: int  # ... served
    peak_secret_pages: int
    level2_splits: int
    level3_splits: int
    directmap_4k: int  # bytes, at the end
    directmap_2m: int
    directmap_1g: int
    peak_pool_waste_bytes: int
    allocation_failures: int
    peak_memcg_overcharge_bytes: int
    worst_memcg_charge_ratio: float  # peak charged / peak used, worst memcg
    series: tuple[tuple[int, int], ...]  # (pages requested, level-2 splits)
    waste_series: tuple[tuple[int, int], ...]  # (pages requested, pool waste bytes)
    seconds: float
    oom_kills: int = 0  # processes killed on VM_FAULT_OOM (the v16 pool)
    fallback_faults: int = 0  # order-0 fallback pages taken (pooled designs)
    # free 2 MiB blocks outside CMA: (pages requested, blocks), and its lowest
    free_2m_series: tuple[tuple[int, int], ...] = ()
    min_free_2m_blocks: int = 0

    @property
    def pages_per_split(self) -> float | None:
        return self.faults / self.level2_splits if self.level2_splits else None


class _Run:
    """A design on a fresh machine, with the failures and samples counted."""

    def __init__(
        self, scenario: str, model: str, design: SecretmemDesign, cfg: ScenarioConfig, expected: int
    ) -> None:
        self.scenario = scenario
        self.model = model
        self.design = design
        self.machine = design.machine
        self.requested = 0
        self.failures = 0
        self._every = max(1, expected // max(1, cfg.samples))
        self._next = 0
        self.series: list[tuple[int, int]] = [(0, self.machine.direct_map.level2_splits)]
        self.waste_series: list[tuple[int, int]] = [(0, 0)]
        self.free_2m_series = [(0, self.machine.phys.free_2m_blocks())]
        self._t0 = time.perf_counter()

    def attempt(self, fn: Callable[[], object]) -> bool:
        """Run one operation that may fault a page; False when it was refused."""
        before = self.design.faults + self.design.failures
        try:
            fn()
            ok = True
        except (SecretMemoryExhausted, MemlockExceeded):
            self.failures += 1
            ok = False
        self.requested += self.design.faults + self.design.failures - before
        if self.requested >= self._next:
            self.sample()
            self._next = self.requested + self._every
        return ok

    def sample(self) -> None:
        point = (self.requested, self.machine.direct_map.level2_splits)
        if self.series[-1] != point:
            self.series.append(point)
        waste = (self.requested, self.design.pool_waste_pages() * PAGE_BYTES)
        if self.waste_series[-1] != waste:
            self.waste_series.append(waste)
        free_2m = (self.requested, self.machine.phys.free_2m_blocks())
        if self.free_2m_series[-1][1] != free_2m[1]:
            self.free_2m_series.append(free_2m)

    def result(self) -> ModelResult:
        self.sample()
        m = self.machine
        dm = m.direct_map
        cgs = list(m.memcgs.values())
        ratios = [cg.peak_charged / cg.peak_used for cg in cgs if cg.peak_used]
        return ModelResult(
            scenario=self.scenario,
            model=self.model,
            pages_requested=self.requested,
            faults=self.design.faults,
            peak_secret_pages=self.design.peak_pages,
            level2_splits=dm.level2_splits,
            level3_splits=dm.level3_splits,
            directmap_4k=dm.bytes_4k,
            directmap_2m=dm.bytes_2m,
            directmap_1g=dm.bytes_1g,
            peak_pool_waste_bytes=self.design.peak_waste_pages * PAGE_BYTES,
            allocation_failures=self.failures,
            peak_memcg_overcharge_bytes=self.design.peak_overcharge,
            worst_memcg_charge_ratio=max(ratios, default=1.0),
            series=tuple(self.series),
            waste_series=tuple(self.waste_series),
            seconds=time.perf_counter() - self._t0,
            oom_kills=int(getattr(self.design, "oom_kills", 0)),
            fallback_faults=int(getattr(self.design, "fallback_faults", 0)),
            free_2m_series=tuple(self.free_2m_series),
            min_free_2m_blocks=min(
                min(n for _, n in self.free_2m_series),
                getattr(self.design, "min_free_2m", self.free_2m_series[0][1]),
            ),
        )


def _keyring(run: _Run, cfg: ScenarioConfig) -> None:
    m = run.machine
    vault = m.spawn(memcg="/vault", memlock_limit=None)
    ring = KeyringSim(run.design, vault)
    for _ in range(cfg.keys):
        if not run.attempt(ring.add) and vault.killed:
            break  # OOM-killed: a dead vault stores no more keys


def _churn(run: _Run, cfg: ScenarioConfig) -> None:
    m = run.machine
    rng = random.Random(cfg.seed ^ 0xC4)  # noqa: S311  (simulation, not crypto)
    live: list[tuple[int, SecretFile]] = []  # (exit step, file)
    created = 0
    step = 0
    while created < cfg.keys:
        step += 1
        for i in [i for i, (end, _) in enumerate(live) if end <= step][::-1]:
            run.design.release(live.pop(i)[1])
        keys = min(rng.randint(1, 512), cfg.keys - created)
        created += keys
        pages = -(-keys // SLOTS_PER_PAGE)
        proc = m.spawn(memcg=f"/session-{step % cfg.churn_live_sessions}", cpu=step)
        lifetime = rng.randint(1, 2 * cfg.churn_live_sessions)
        try:
            f = run.design.mmap(proc, pages)
        except MemlockExceeded:
            run.failures += 1
            continue
        ok = True
        for index in range(pages):
            ok = run.attempt(partial(run.design.fault, f, index))
            if not ok:
                break
        if ok:
            live.append((step + lifetime, f))
        elif not f.closed:  # (an OOM kill released it already)
            run.design.release(f)  # the session gives up, or dies
        for _ in range(cfg.churn_idle_ops):
            m.workload.step()
    for _, f in live:
        run.design.release(f)


def _tenants(run: _Run, cfg: ScenarioConfig) -> None:
    m = run.machine
    n = max(1, cfg.tenants)
    rings = [KeyringSim(run.design, m.spawn(memcg=f"/tenant-{i}", cpu=i)) for i in range(n)]
    dead: set[int] = set()
    for k in range(cfg.keys):
        t = k % n
        if t in dead:
            continue
        if not run.attempt(rings[t].add):
            dead.add(t)  # a fault that fails kills the tenant's vault


def _fork_bomb(run: _Run, cfg: ScenarioConfig) -> None:
    m = run.machine
    for i in range(cfg.keys):
        proc = m.spawn(memcg="/fork-bomb", cpu=i)
        try:
            f = run.design.mmap(proc, 1)
        except MemlockExceeded:
            run.failures += 1
            continue
        if not run.attempt(partial(run.design.fault, f, 0)) and not f.closed:
            run.design.release(f)


SCENARIOS: dict[str, Callable[[_Run, ScenarioConfig], None]] = {
    "keyring": _keyring,
    "churn": _churn,
    "tenants": _tenants,
    "fork-bomb": _fork_bomb,
}

#: pages each scenario is expected to request, for sampling
_EXPECTED: dict[str, Callable[[ScenarioConfig], int]] = {
    "keyring": lambda c: c.keys // SLOTS_PER_PAGE + 1,
    "churn": lambda c: c.keys // SLOTS_PER_PAGE * 2 + 1,
    "tenants": lambda c: c.keys // SLOTS_PER_PAGE + c.tenants,
    "fork-bomb": lambda c: c.keys,
}

#: the models compared: (name, design factory, needs a CMA area)
MODELS: dict[str, tuple[Callable[[Machine], SecretmemDesign], bool]] = {
    "page-model": (PageByPageDesign, False),
    "pooled-pmd-model": (lambda m: PooledPmdDesign(m, fallback=False), True),
    "pmd-buddy-model": (PmdBuddyDesign, False),
    # the review's proposal, never in v16: compare --fallback adds it
    "pooled-pmd-model+fallback": (lambda m: PooledPmdDesign(m, fallback=True), True),
}
#: what ``secretvault model compare`` runs unless asked for the variant
COMPARED: tuple[str, ...] = ("page-model", "pooled-pmd-model", "pmd-buddy-model")


def run_scenario(scenario: str, model: str, cfg: ScenarioConfig | None = None) -> ModelResult:
    """Boot a machine for ``model`` and run ``scenario`` on it."""
    cfg = cfg if cfg is not None else ScenarioConfig()
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    factory, wants_cma = MODELS[model]
    machine = Machine(
        memory_bytes=cfg.memory_bytes,
        cma_bytes=cfg.cma_bytes if wants_cma else 0,
        seed=cfg.seed,
        workload=cfg.workload,
    )
    run = _Run(scenario, model, factory(machine), cfg, _EXPECTED[scenario](cfg))
    SCENARIOS[scenario](run, cfg)
    return run.result()
