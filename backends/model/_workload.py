"""A seeded background workload: the rest of the machine, allocating and freeing.

Secret pages do not land in an empty machine.  Which 2 MiB regions they
land in depends on what else holds memory: long-lived kernel objects
scattered through unmovable pageblocks, page cache and anonymous memory
(movable, partly in transparent huge pages), freed pages sitting on the
per-CPU lists.  This workload keeps a mix of such allocations near a target
occupancy, freeing uniformly random victims, which leaves the holes and
mixed pageblocks that make secret pages spread out.

Everything is driven by one ``random.Random(seed)``: the same seed and the
same calls give the same frames, so runs repeat exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from secretvault.backends.model._physmem import MOVABLE, RECLAIMABLE, UNMOVABLE, PhysicalMemory

_TABLE = 256  # resolution of the precomputed choice tables


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Shape of the background workload.

    ``occupancy`` is the fraction of memory it holds on average; the shares
    are of allocations by count; the order tables give each type's sizes.
    ``ops_per_fault`` is how many background operations run per simulated
    secret page fault (fractions accumulate).
    """

    occupancy: float = 0.5
    unmovable_share: float = 0.12
    reclaimable_share: float = 0.08
    movable_orders: tuple[tuple[int, float], ...] = (
        (0, 0.80),
        (1, 0.04),
        (2, 0.04),
        (3, 0.04),
        (4, 0.04),
        (9, 0.04),  # transparent huge pages
    )
    unmovable_orders: tuple[tuple[int, float], ...] = ((0, 0.85), (1, 0.07), (2, 0.04), (3, 0.04))
    reclaimable_orders: tuple[tuple[int, float], ...] = ((0, 0.9), (1, 0.1))
    ops_per_fault: float = 1.0
    warmup_ops_per_object: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.occupancy < 0.95:
            raise ValueError("occupancy must be in [0, 0.95)")
        if self.unmovable_share + self.reclaimable_share > 1.0:
            raise ValueError("unmovable + reclaimable shares exceed 1")
        if self.ops_per_fault < 0:
            raise ValueError("ops_per_fault must be >= 0")


#: no background at all: an empty machine (tests, idle-kernel comparisons)
QUIET = WorkloadConfig(occupancy=0.0, ops_per_fault=0.0, warmup_ops_per_object=0.0)


def _table(weights: tuple[tuple[int, float], ...]) -> list[int]:
    total = sum(w for _, w in weights)
    out: list[int] = []
    acc = 0.0
    for value, w in weights:
        acc += w / total
        while len(out) < round(acc * _TABLE):
            out.append(value)
    while len(out) < _TABLE:
        out.append(weights[-1][0])
    return out


class BackgroundWorkload:
    """Allocations of every type, kept near ``config.occupancy`` of memory."""

    def __init__(self, phys: PhysicalMemory, config: WorkloadConfig, seed: int) -> None:
        self.phys = phys
        self.config = config
        self.rng = random.Random(seed)  # noqa: S311  (a simulation's seed, not crypto)
        self.target = int(config.occupancy * phys.pages)
        self.held = 0
        self.failures = 0
        self.ops = 0
        self._ncpus = phys.ncpus
        # the live allocations, in parallel lists for O(1) random removal
        self._pfn: list[int] = []
        self._order: list[int] = []
        self._mt: list[int] = []
        self._index: dict[int, int] = {}
        mt_table = [MOVABLE] * _TABLE
        u = round(config.unmovable_share * _TABLE)
        r = round(config.reclaimable_share * _TABLE)
        mt_table[:u] = [UNMOVABLE] * u
        mt_table[u : u + r] = [RECLAIMABLE] * r
        self._mt_table = mt_table
        self._orders = {
            MOVABLE: _table(config.movable_orders),
            UNMOVABLE: _table(config.unmovable_orders),
            RECLAIMABLE: _table(config.reclaimable_orders),
        }
        phys.migration_hook = self._migrated
        self._credit = 0.0
        self._warm_up()

    def _warm_up(self) -> None:
        if self.target <= 0:
            return
        while self.held < self.target:
            if not self._alloc():
                break
        for _ in range(int(self.config.warmup_ops_per_object * len(self._pfn))):
            self.step()

    def _alloc(self) -> bool:
        rng = self.rng
        mt = self._mt_table[int(rng.random() * _TABLE)]
        order = self._orders[mt][int(rng.random() * _TABLE)]
        cpu = int(rng.random() * self._ncpus)
        pfn = self.phys.alloc(order, mt, cpu)
        if pfn < 0:
            self.failures += 1
            return False
        self._index[pfn] = len(self._pfn)
        self._pfn.append(pfn)
        self._order.append(order)
        self._mt.append(mt)
        self.held += 1 << order
        return True

    def _free_random(self) -> None:
        n = len(self._pfn)
        if not n:
            return
        i = int(self.rng.random() * n)
        pfn, order, mt = self._pfn[i], self._order[i], self._mt[i]
        last = n - 1
        if i != last:
            moved = self._pfn[last]
            self._pfn[i] = moved
            self._order[i] = self._order[last]
            self._mt[i] = self._mt[last]
            self._index[moved] = i
        self._pfn.pop()
        self._order.pop()
        self._mt.pop()
        del self._index[pfn]
        self.held -= 1 << order
        self.phys.free(pfn, order, mt, int(self.rng.random() * self._ncpus))

    def _migrated(self, old: int, new: int, order: int) -> None:
        i = self._index.pop(old)
        self._pfn[i] = new
        self._index[new] = i

    def step(self) -> None:
        """One operation: allocate or free, drifting back to the target."""
        self.ops += 1
        held, target = self.held, self.target
        if held < target * 0.98:
            p_alloc = 0.75
        elif held > target * 1.02:
            p_alloc = 0.25
        else:
            p_alloc = 0.5
        if self.rng.random() < p_alloc:
            self._alloc()
        else:
            self._free_random()

    def run(self, faults: int = 1) -> None:
        """The background operations due for ``faults`` secret page faults."""
        self._credit += faults * self.config.ops_per_fault
        while self._credit >= 1.0:
            self._credit -= 1.0
            self.step()

    @property
    def objects(self) -> int:
        return len(self._pfn)
