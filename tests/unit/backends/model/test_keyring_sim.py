"""KeyringSim packs keys exactly like the slot allocator, key by key.

The scenarios trust :class:`KeyringSim` to stand for a vault's keyring, so
the same sequence of creates and deletes (keys of every type, mixed) runs on
the real :class:`SlotAllocator` over a page-model backend and on the sim, and
after every step both must agree on: the page each new key lands on, the
slots used in it and its size class, the pages carved (first touched), the
regions mapped (and their sizes) and given back, and a refusal at the
memlock limit.  Pages are named ``(region, index)``, regions by their order
of first use, so a region mapped again at a freed one's address is a new one.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secretvault.api.errors import MemlockExceeded
from secretvault.backends import SlotAllocator, _sodium
from secretvault.backends._base import KEY_SLOT_SIZES, Region
from secretvault.backends._slots import PAGE_SIZE, SIZE_CLASSES, Slot, size_class
from secretvault.backends.model import (
    QUIET,
    Machine,
    PageByPageDesign,
    SecretFile,
    make_model_backend,
)
from secretvault.backends.model._keyring_sim import KeyringSim, SimPage
from tests.unit.backends._backends import Recording

MiB = 1 << 20
PageId = tuple[int, int]  # (region by order of first use, page index in it)

#: what a keyring allocates: its keys, and the HMAC state of the row MAC
SIZES = (*sorted(set(KEY_SLOT_SIZES.values())), _sodium.HMACSHA256_STATEBYTES)


class NamedRegions(Recording):
    """Recording that names each region by its order of first use."""

    def __init__(self, memlock_limit: int | None) -> None:
        # the vault's way: a page is faulted when the allocator first carves it
        self.model = make_model_backend(
            "page-model",
            memory_bytes=64 * MiB,
            workload=QUIET,
            memlock_limit=memlock_limit,
            fault_on_allocate=False,
        )
        super().__init__(self.model)
        self._next = itertools.count()
        self.live: dict[int, tuple[int, Region]] = {}  # address -> (name, region)
        self.released: list[int] = []
        self.carved: list[PageId] = []

    def allocate(self, pages: int) -> Region:
        region = super().allocate(pages)
        self.live[region.address] = (next(self._next), region)
        return region

    def touch(self, address: int) -> None:
        super().touch(address)
        self.carved.append(self.page_of(address))

    def free(self, region: Region) -> None:
        self.released.append(self.live.pop(region.address)[0])
        super().free(region)

    def page_of(self, address: int) -> PageId:
        for name, r in self.live.values():
            if r.address <= address < r.address + r.length:
                return name, (address - r.address) // PAGE_SIZE
        raise AssertionError(f"{address:#x} is in no live region")

    def regions(self) -> dict[int, int]:
        return {name: r.pages for name, r in self.live.values()}


class CarvingDesign(PageByPageDesign):
    """The sim's design, logging each first touch as (file, page index)."""

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.log: list[tuple[SecretFile, int]] = []

    def fault(self, f: SecretFile, index: int) -> int:
        pfn = super().fault(f, index)
        self.log.append((f, index))
        return pfn


@dataclass(frozen=True)
class Params:
    min_region_pages: int = 16
    max_region_pages: int = 256
    reserve_regions: int = 1
    memlock_pages: int | None = None


class Pair:
    """The allocator and the sim, driven together and compared at each step."""

    def __init__(self, p: Params) -> None:
        limit = None if p.memlock_pages is None else p.memlock_pages * PAGE_SIZE
        shape = {
            "min_region_pages": p.min_region_pages,
            "max_region_pages": p.max_region_pages,
            "reserve_regions": p.reserve_regions,
        }
        self.backend = NamedRegions(limit)
        self.alloc = SlotAllocator(self.backend, **shape)
        machine = Machine(memory_bytes=64 * MiB, workload=QUIET)
        self.design = CarvingDesign(machine)
        self.sim = KeyringSim(self.design, machine.spawn(memlock_limit=limit), **shape)
        self._next = itertools.count()
        self.names: dict[object, int] = {}  # sim region -> name
        self.sim_released: list[int] = []
        self.live: list[tuple[Slot, SimPage]] = []
        self.used: Counter[PageId] = Counter()  # live keys per real page
        self.size: dict[PageId, int] = {}  # each real page's size class
        self.refusals = 0
        self.steps = 0
        self._carves = 0  # first touches compared so far

    def _sync_names(self) -> None:
        regions = set(self.sim.regions)
        for r in [r for r in self.names if r not in regions]:
            self.sim_released.append(self.names.pop(r))
        for r in self.sim.regions:
            if r not in self.names:
                self.names[r] = next(self._next)

    def sim_page(self, page: SimPage) -> PageId:
        return self.names[page.region], page.index

    def create(self, size: int) -> None:
        real: Slot | MemlockExceeded
        sim: SimPage | MemlockExceeded
        try:
            real = self.alloc.allocate(size)
        except MemlockExceeded as e:
            real = e
        try:
            sim = self.sim.add(size)
        except MemlockExceeded as e:
            sim = e
        self._sync_names()
        if isinstance(real, MemlockExceeded) or isinstance(sim, MemlockExceeded):
            assert type(real) is type(sim), f"step {self.steps}: {real!r} vs {sim!r}"
            self.refusals += 1
        else:
            where = self.backend.page_of(real.address)
            assert where == self.sim_page(sim), f"step {self.steps}: a {size}-byte key"
            cls = size_class(size)
            assert self.size.setdefault(where, cls) == cls == sim.size
            assert real.address % PAGE_SIZE % cls == 0  # slots tile the page
            self.used[where] += 1
            assert self.used[where] == sim.used
            self.live.append((real, sim))
        self._after_step()

    def delete(self, i: int) -> None:
        real, sim = self.live.pop(i)
        where = self.backend.page_of(real.address)
        assert where == self.sim_page(sim)
        real.free()
        self.sim.remove(sim)
        self.used[where] -= 1
        assert self.used[where] == sim.used
        if not self.used[where]:
            del self.used[where], self.size[where]
        self._sync_names()
        self._after_step()

    def _after_step(self) -> None:
        self.steps += 1
        b = self.backend
        assert b.regions() == {self.names[r]: r.file.pages for r in self.sim.regions}
        assert b.released == self.sim_released
        # this step's first touches (a carve is of a live region's page)
        files = {r.file: self.names[r] for r in self.sim.regions}
        seen, self._carves = self._carves, len(b.carved)
        assert b.carved[seen:] == [(files[f], i) for f, i in self.design.log[seen:]]
        assert len(b.carved) == len(self.design.log)
        if self.steps % 97 == 0:
            self.check_all()

    def check_all(self) -> None:
        """Every page's occupancy, every region's pages in use, the stats."""
        sim_used = {self.sim_page(p): p.used for _, p in self.live}
        assert dict(self.used) == sim_used
        in_use = Counter(region for region, _ in self.used)
        assert dict(in_use) == {
            self.names[r]: r.pages_in_use for r in self.sim.regions if r.pages_in_use
        }
        stats = self.alloc.statistics()
        for c in stats.slots:
            pages = [p for p, cls in self.size.items() if cls == c.size]
            used = sum(self.used[p] for p in pages)
            assert (c.pages, c.slots_used, c.slots_free) == (
                len(pages),
                used,
                len(pages) * (PAGE_SIZE // c.size) - used,
            ), c
        assert stats.pages_mapped == sum(r.file.pages for r in self.sim.regions)
        assert stats.pages_resident == sum(r.file.faulted for r in self.sim.regions)
        assert self.backend.model.design.faults == self.design.faults
        # the same faults and releases on two same machines: the same splits
        real_dm, sim_dm = self.backend.model.machine.direct_map, self.design.machine.direct_map
        assert (real_dm.level2_splits, real_dm.level3_splits) == (
            sim_dm.level2_splits,
            sim_dm.level3_splits,
        )

    def close(self) -> None:
        self.check_all()
        self.alloc.close()
        self.sim.close()


def run(params: Params, ops: Iterable[tuple[str, int]]) -> Pair:
    """``("create", size)`` and ``("delete", index into the live keys)``."""
    pair = Pair(params)
    for op, arg in ops:
        if op == "create":
            pair.create(arg)
        elif pair.live:
            pair.delete(arg % len(pair.live))
    return pair


# --- fixed sequences ---------------------------------------------------------------


def mixed_sizes(rng: random.Random) -> int:
    # mostly keys (ed25519 64 bytes, the rest 32), now and then a MAC state
    return rng.choice((64, 64, 32, 32, 32, SIZES[-1]))


def grow_then_churn(
    seed: int, grow: int, churn: int, *, drain: bool = True
) -> Iterator[tuple[str, int]]:
    """Grow, delete at random a bit more than create, then (``drain``)
    delete what is left, oldest first, so regions empty and go back."""
    rng = random.Random(seed)
    for _ in range(grow):
        yield "create", mixed_sizes(rng)
    for _ in range(churn):
        if rng.random() < 0.45:
            yield "create", mixed_sizes(rng)
        else:
            yield "delete", rng.randrange(1 << 30)
    if drain:
        for _ in range(grow):
            yield "delete", 0


def sawtooth(seed: int, teeth: int, height: int) -> Iterator[tuple[str, int]]:
    """Fill to ``height`` keys, delete all (newest or oldest first), again."""
    rng = random.Random(seed)
    for tooth in range(teeth):
        for _ in range(height):
            yield "create", mixed_sizes(rng)
        for k in range(height):
            yield "delete", (height - 1 - k) if tooth % 2 else 0


def every_other(seed: int, keys: int, rounds: int) -> Iterator[tuple[str, int]]:
    """Free every other key: half-full pages everywhere, then refill."""
    rng = random.Random(seed)
    live = 0
    for _ in range(rounds):
        for _ in range(keys):
            yield "create", mixed_sizes(rng)
        live += keys
        for k in range(live // 2):
            yield "delete", k  # index k of the shrinking list: every other key
        live -= live // 2


def empty_pages_refilled(
    seed: int, pages: int, order: tuple[int, ...]
) -> Iterator[tuple[str, int]]:
    """Fill ``pages`` pages, empty whole pages in ``order``, refill them.

    A region's emptied pages are reused most recently emptied first.
    """
    rng = random.Random(seed)
    per_page = PAGE_SIZE // 64
    live = list(range(pages * per_page))  # key k lands on page k // per_page
    for _ in live:
        yield "create", 64
    for page in order:
        for key in range(page * per_page, (page + 1) * per_page):
            yield "delete", live.index(key)
            live.remove(key)
    for _ in range(len(order) * per_page):
        yield "create", rng.choice((64, 32))


#: name -> (allocator shape, the sequence's generator)
FIXED: dict[str, tuple[Params, Callable[[], Iterator[tuple[str, int]]]]] = {
    "defaults: grow to 6000 keys, then heavy churn": (
        Params(),
        lambda: grow_then_churn(5, 6000, 14_000),
    ),
    "defaults: regions grow past 16 pages, then drain": (
        Params(),
        lambda: grow_then_churn(3, 24_000, 2000),
    ),
    "small regions: growth clamped at the maximum, release beyond the reserve": (
        Params(min_region_pages=1, max_region_pages=3, reserve_regions=1),
        lambda: grow_then_churn(7, 6000, 8000),
    ),
    "no reserve: every empty region goes back": (
        Params(min_region_pages=2, max_region_pages=4, reserve_regions=0),
        lambda: sawtooth(11, 6, 700),
    ),
    "two reserve regions, sawtooth": (
        Params(min_region_pages=1, max_region_pages=4, reserve_regions=2),
        lambda: sawtooth(13, 5, 900),
    ),
    "half-empty pages refilled fullest first": (
        Params(min_region_pages=1, max_region_pages=16),
        lambda: every_other(17, 1500, 4),
    ),
    "emptied pages reused, the last emptied first": (
        Params(),
        lambda: empty_pages_refilled(23, 8, (1, 6, 3, 0)),
    ),
    "memlock limit: regions halve, then creates are refused": (
        Params(min_region_pages=16, max_region_pages=256, memlock_pages=40),
        lambda: grow_then_churn(19, 4000, 3000, drain=False),
    ),
}


@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_sequences_pack_alike(name: str) -> None:
    params, ops = FIXED[name]
    pair = run(params, ops())
    # the sequence did what its name says
    if "memlock" in name:
        assert pair.refusals > 0
        assert pair.backend.refused
    if "no reserve" in name or "sawtooth" in name:
        assert len(pair.backend.released) >= 5
    if "churn" in name or "drain" in name:
        assert pair.backend.released
    if "grow past" in name:
        assert max(pair.sim.region_sizes) > params.min_region_pages
    if "clamped" in name:
        assert max(pair.sim.region_sizes) == params.max_region_pages
    pair.close()


def test_deleting_everything_keeps_the_reserve_only() -> None:
    ops = [("create", size) for size in SIZES for _ in range(3000)]
    pair = run(Params(min_region_pages=1, max_region_pages=8, reserve_regions=1), ops)
    assert len(pair.sim.regions) > 2
    for _ in range(len(pair.live)):
        pair.delete(0)
    assert len(pair.backend.live) == len(pair.sim.regions) == 1
    pair.close()


# --- generated sequences -----------------------------------------------------------

sizes = st.one_of(st.sampled_from(SIZES), st.integers(1, SIZE_CLASSES[-1]))
batches = st.one_of(
    st.tuples(st.just("create"), sizes, st.integers(1, 400)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 30), st.integers(1, 400)),
)
params = st.builds(
    lambda lo, extra, reserve, memlock: Params(lo, lo + extra, reserve, memlock),
    st.integers(1, 4),
    st.integers(0, 8),
    st.integers(0, 2),
    st.one_of(st.none(), st.integers(1, 12)),
)


def expand(batches: list[tuple[str, int, int]]) -> Iterator[tuple[str, int]]:
    """A batch of ``n`` creates of one size, or ``n`` deletes from a seed."""
    for op, arg, n in batches:
        rng = random.Random(arg)
        for _ in range(n):
            yield (op, arg) if op == "create" else (op, rng.randrange(1 << 30))


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(params=params, batches=st.lists(batches, max_size=20))
def test_generated_sequences_pack_alike(
    params: Params, batches: list[tuple[str, int, int]]
) -> None:
    run(params, expand(batches)).close()
