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
samples how many free 2 MiB blocks the machine has outside CMA, the
failed faults so far and the memcg over-charge, for the chart.

Keyrings are :class:`~secretvault.backends.model._keyring_sim.KeyringSim`
(re-exported here), packed the way the slot allocator packs them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from secretvault.api.errors import MemlockExceeded, SecretMemoryExhausted
from secretvault.backends.model._directmap import PAGE_BYTES, PAGES_PER_2M
from secretvault.backends.model._keyring_sim import (
    ED25519_SLOT,
    SLOTS_PER_PAGE,
    KeyringSim,
    SimPage,
)
from secretvault.backends.model._machine import (
    DEFAULT_CMA,
    DEFAULT_MEMORY,
    Machine,
    SecretFile,
    SecretmemDesign,
)
from secretvault.backends.model._pagebypage import PageByPageDesign
from secretvault.backends.model._pmdbuddy import PmdBuddyDesign
from secretvault.backends.model._pooled import PooledPmdDesign
from secretvault.backends.model._workload import WorkloadConfig

__all__ = [
    "COMPARED",
    "ED25519_SLOT",
    "MODELS",
    "SCENARIOS",
    "SLOTS_PER_PAGE",
    "KeyringSim",
    "ModelResult",
    "ScenarioConfig",
    "SimPage",
    "run_scenario",
]


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
    # (pages requested, failed faults so far) and (pages requested, memcg
    # bytes charged beyond the secret pages in use), sampled like ``series``
    failure_series: tuple[tuple[int, int], ...] = ()
    overcharge_series: tuple[tuple[int, int], ...] = ()
    machine_2m_regions: int = 0  # the machine's 2 MiB regions: what splits are a share of

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
        self.failure_series: list[tuple[int, int]] = [(0, 0)]
        self.overcharge_series: list[tuple[int, int]] = [(0, 0)]
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
        for series, value in (
            (self.failure_series, self.failures),
            (self.overcharge_series, self.design.charged - self.design.pages_in_use * PAGE_BYTES),
        ):
            if series[-1][1] != value:
                series.append((self.requested, value))

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
            failure_series=tuple(self.failure_series),
            overcharge_series=tuple(self.overcharge_series),
            machine_2m_regions=m.phys.pages // PAGES_PER_2M,
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
