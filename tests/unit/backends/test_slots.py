"""The slot allocator's rules, on anonymous memory and on real secret memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from secretvault.api.errors import InvalidArgument, MemlockExceeded, SlotFreed
from secretvault.backends import _sodium, _sys
from secretvault.backends._memfd import MemfdSecretBackend
from secretvault.backends._slots import PAGE_SIZE, SIZE_CLASSES, SlotAllocator, size_class
from tests.unit.backends._backends import AnonymousBackend, MemlockBudget, Recording


def raw(address: int, n: int) -> bytes:
    """Read ``n`` bytes at ``address`` (a copy: tests only, never key code)."""
    return bytes(_sodium.ffi.buffer(_sodium.pointer(address), n))


def fill(slot_ptr: _sodium.Ptr, n: int) -> None:
    _sodium.randombytes_buf(slot_ptr, n)


@pytest.fixture(
    params=[
        pytest.param("anonymous"),
        pytest.param("memfd_secret", marks=pytest.mark.memfd_secret),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Recording]:
    inner = AnonymousBackend() if request.param == "anonymous" else MemfdSecretBackend()
    rec = Recording(inner)
    yield rec
    if not rec.closed:
        rec.close()


@pytest.fixture
def alloc(backend: Recording) -> Iterator[SlotAllocator]:
    a = SlotAllocator(backend)
    yield a
    if not backend.closed:
        a.close()


def page_of(address: int) -> int:
    return address // PAGE_SIZE


# --- size classes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "cls"),
    [
        (1, 32),
        (31, 32),
        (32, 32),
        (33, 64),
        (64, 64),
        (65, 128),
        (128, 128),
        (129, 256),
        (256, 256),
    ],
)
def test_size_class(size: int, cls: int) -> None:
    assert size_class(size) == cls


@pytest.mark.parametrize("size", [0, -1, 257, 4096])
def test_size_class_rejects(size: int) -> None:
    with pytest.raises(InvalidArgument):
        size_class(size)


def test_slot_is_aligned_zeroed_and_points_in_place(alloc: SlotAllocator) -> None:
    for size in (32, 64, 100, 256):
        slot = alloc.allocate(size)
        cls = size_class(size)
        assert slot.size == size
        assert slot.address % cls == 0
        # the cffi pointer is the region's own address: no copy in between
        assert _sodium.address(slot.ptr) == slot.address
        assert raw(slot.address, cls) == bytes(cls)


def test_libsodium_works_in_place(alloc: SlotAllocator) -> None:
    seed = alloc.allocate(32)
    sk = alloc.allocate(64)
    fill(seed.ptr, 32)
    pk = _sodium.ffi.new("unsigned char[32]")
    _sodium.crypto_sign_seed_keypair(pk, sk.ptr, seed.ptr)
    sig = _sodium.crypto_sign_detached(sk.ptr, b"message")
    assert _sodium.crypto_sign_verify_detached(sig, b"message", bytes(pk))
    assert not _sodium.crypto_sign_verify_detached(sig, b"messagf", bytes(pk))


# --- packing ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", SIZE_CLASSES)
def test_packing_density(alloc: SlotAllocator, backend: Recording, cls: int) -> None:
    per_page = PAGE_SIZE // cls
    slots = [alloc.allocate(cls) for _ in range(3 * per_page)]
    pages = {page_of(s.address) for s in slots}
    assert len(pages) == 3, "each page is filled before the next is carved"
    assert len({s.address for s in slots}) == len(slots)
    assert backend.allocated == [16], "one minimum-size region holds them"
    st = {c.size: c for c in alloc.statistics().slots}[cls]
    assert (st.pages, st.slots_used, st.slots_free) == (3, 3 * per_page, 0)
    assert alloc.statistics().key_bytes == 3 * per_page * cls


def test_size_classes_do_not_share_pages(alloc: SlotAllocator) -> None:
    by_class = {c: alloc.allocate(c) for c in SIZE_CLASSES}
    assert len({page_of(s.address) for s in by_class.values()}) == len(SIZE_CLASSES)


def test_lowest_free_offset_is_reused_first(alloc: SlotAllocator) -> None:
    slots = [alloc.allocate(64) for _ in range(8)]
    slots[5].free()
    slots[2].free()
    assert alloc.allocate(64).address == slots[2].address
    assert alloc.allocate(64).address == slots[5].address


def test_fullest_partial_page_is_used_first(alloc: SlotAllocator) -> None:
    per_page = PAGE_SIZE // 64
    first = [alloc.allocate(64) for _ in range(per_page)]
    second = [alloc.allocate(64) for _ in range(per_page)]
    for s in first[:10]:
        s.free()  # first page: 54 used
    second[-1].free()  # second page: 63 used
    assert alloc.allocate(64).address == second[-1].address


# --- free ----------------------------------------------------------------------------


def test_free_zeroes_the_whole_slot(alloc: SlotAllocator) -> None:
    keep = alloc.allocate(64)
    gone = alloc.allocate(50)  # zeroing covers the class size, not just 50 bytes
    fill(keep.ptr, 64)
    fill(gone.ptr, 64)
    addr = gone.address
    kept = raw(keep.address, 64)
    assert raw(addr, 64) != bytes(64)
    gone.free()
    assert raw(addr, 64) == bytes(64)
    assert raw(keep.address, 64) == kept, "a neighbour is untouched"
    again = alloc.allocate(64)
    assert again.address == addr and raw(addr, 64) == bytes(64)


def test_use_after_free_raises(alloc: SlotAllocator) -> None:
    slot = alloc.allocate(32)
    slot.free()
    assert slot.freed
    with pytest.raises(SlotFreed):
        _ = slot.ptr


def test_double_free_raises(alloc: SlotAllocator) -> None:
    slot = alloc.allocate(32)
    other = alloc.allocate(32)
    slot.free()
    with pytest.raises(SlotFreed):
        slot.free()
    # and it did not disturb the allocator's books
    assert alloc.statistics().key_bytes == 32
    other.free()
    assert alloc.statistics().key_bytes == 0


def test_context_manager_frees(alloc: SlotAllocator) -> None:
    with alloc.allocate(64) as slot:
        fill(slot.ptr, 64)
        addr = slot.address
    assert slot.freed
    assert raw(addr, 64) == bytes(64)


def test_emptied_page_is_reused_by_another_class_zeroed(alloc: SlotAllocator) -> None:
    slots = [alloc.allocate(64) for _ in range(PAGE_SIZE // 64)]
    page = page_of(slots[0].address)
    for s in slots:
        fill(s.ptr, 64)
    for s in slots:
        s.free()
    s32 = [alloc.allocate(32) for _ in range(PAGE_SIZE // 32)]
    assert {page_of(s.address) for s in s32} == {page}
    assert raw(page * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)


# --- regions: growth, unmapping, reserve -----------------------------------------------


def test_empty_region_is_unmapped_keeping_one_in_reserve(
    alloc: SlotAllocator, backend: Recording
) -> None:
    per_region = 16 * (PAGE_SIZE // 64)
    slots = [alloc.allocate(64) for _ in range(2 * per_region + 1)]
    assert backend.allocated == [16, 16, 16]
    for s in slots:
        s.free()
    # three regions empty: two unmapped, one kept against churn
    assert len(backend.freed) == 2
    assert alloc.statistics().regions == 1
    assert alloc.statistics().pages_mapped == 16
    # the reserve is used again before any new region is mapped
    alloc.allocate(64)
    assert backend.allocated == [16, 16, 16]


def test_reserve_zero_unmaps_every_empty_region(backend: Recording) -> None:
    alloc = SlotAllocator(backend, reserve_regions=0)
    slot = alloc.allocate(32)
    slot.free()
    assert len(backend.freed) == 1
    assert alloc.statistics().regions == 0
    alloc.close()


def expected_region(mapped: int, lo: int, hi: int) -> int:
    """The rule in _slots.py's docstring: ~1/16 of what is mapped, clamped."""
    return max(lo, min(hi, mapped // 16))


def test_region_growth_rule(backend: Recording) -> None:
    lo, hi = 2, 8
    alloc = SlotAllocator(backend, min_region_pages=lo, max_region_pages=hi)
    # one 256-byte slot per 16 fills a page; allocate 400 pages' worth
    per_page = PAGE_SIZE // 256
    for _ in range(400 * per_page):
        alloc.allocate(256)
    mapped = 0
    for got in backend.allocated:
        assert got == expected_region(mapped, lo, hi)
        mapped += got
    assert mapped >= 400
    assert hi in backend.allocated and lo in backend.allocated
    # mapped-but-unused is at most one region
    assert mapped - 400 < hi
    alloc.close()


def test_region_growth_keeps_overshoot_small_at_scale(backend: Recording) -> None:
    """With the defaults, locked-but-unused pages stay within one region."""
    alloc = SlotAllocator(backend)
    per_page = PAGE_SIZE // 256
    needed = 700
    for _ in range(needed * per_page):
        alloc.allocate(256)
    mapped = sum(backend.allocated)
    assert mapped - needed < max(16, min(256, mapped // 16))
    alloc.close()


def test_near_the_memlock_limit_regions_shrink_to_use_every_page() -> None:
    backend = MemlockBudget(AnonymousBackend(), budget=20)
    alloc = SlotAllocator(backend)
    per_page = PAGE_SIZE // 64
    slots = [alloc.allocate(64) for _ in range(20 * per_page)]
    with pytest.raises(MemlockExceeded):
        alloc.allocate(64)
    assert backend.allocated == [16, 4]
    assert backend.refused == [16, 8, 16, 8, 4, 2, 1]
    # the earlier slots still work
    fill(slots[-1].ptr, 64)
    slots[0].free()
    assert alloc.allocate(64).address == slots[0].address
    alloc.close()


def test_close_zeroes_unmaps_and_disarms_handles(backend: Recording) -> None:
    alloc = SlotAllocator(backend)
    slot = alloc.allocate(64)
    fill(slot.ptr, 64)
    alloc.close()
    assert backend.closed
    assert backend.live_pages == 0
    assert slot.freed
    with pytest.raises(SlotFreed):
        _ = slot.ptr  # the memory is unmapped: a pointer would crash us
    slot.free()  # nothing to wipe, must not touch the unmapped page
    with pytest.raises(SlotFreed):
        alloc.allocate(64)


# --- statistics ---------------------------------------------------------------------------


def test_statistics_slots_and_bytes(alloc: SlotAllocator, backend: Recording) -> None:
    a = [alloc.allocate(64) for _ in range(10)]
    b = [alloc.allocate(20) for _ in range(3)]
    a[0].free()
    st = alloc.statistics()
    assert st.backend == backend.name and st.protection == backend.protection
    by = {c.size: c for c in st.slots}
    assert (by[64].pages, by[64].slots_used, by[64].slots_free) == (1, 9, 55)
    assert (by[32].pages, by[32].slots_used, by[32].slots_free) == (1, 3, 125)
    assert (by[128].pages, by[256].pages) == (0, 0)
    assert st.key_bytes == 9 * 64 + 3 * 20
    assert st.regions == 1 and st.pages_mapped == 16
    assert st.bytes_locked == 16 * PAGE_SIZE
    del b


def test_headroom_arithmetic(alloc: SlotAllocator, monkeypatch: pytest.MonkeyPatch) -> None:
    soft, locked = 1 << 20, 64 << 10
    monkeypatch.setattr(_sys, "memlock_rlimit", lambda: (soft, 2 * soft))
    monkeypatch.setattr(_sys, "vm_locked_bytes", lambda: locked)
    monkeypatch.setattr("secretvault.backends._procfs.has_cap_ipc_lock", lambda: False)
    for _ in range(10):
        alloc.allocate(64)
    m = alloc.statistics().memlock
    assert (m.soft, m.hard, m.locked, m.cap_ipc_lock) == (soft, 2 * soft, locked, False)
    assert m.headroom_bytes == soft - locked
    limit_pages = (soft - locked) // PAGE_SIZE  # 240
    spare = 15  # the region's 16 pages less the one carved for 64-byte slots
    keys = dict(m.headroom_keys)
    assert keys["ed25519"] == 54 + (spare + limit_pages) * 64
    assert keys["x25519"] == (spare + limit_pages) * 128  # no 32-byte page yet
    assert keys["hmac-sha256"] == keys["x25519"]


def test_headroom_is_zero_past_the_limit_and_none_when_unlimited(
    alloc: SlotAllocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("secretvault.backends._procfs.has_cap_ipc_lock", lambda: False)
    monkeypatch.setattr(_sys, "memlock_rlimit", lambda: (PAGE_SIZE, PAGE_SIZE))
    monkeypatch.setattr(_sys, "vm_locked_bytes", lambda: 16 * PAGE_SIZE)
    m = alloc.statistics().memlock
    assert m.headroom_bytes == 0
    monkeypatch.setattr(_sys, "memlock_rlimit", lambda: (-1, -1))
    m = alloc.statistics().memlock
    assert m.headroom_bytes is None
    assert all(v is None for _, v in m.headroom_keys)
    monkeypatch.setattr(_sys, "memlock_rlimit", lambda: (PAGE_SIZE, PAGE_SIZE))
    monkeypatch.setattr("secretvault.backends._procfs.has_cap_ipc_lock", lambda: True)
    assert alloc.statistics().memlock.headroom_bytes is None, "CAP_IPC_LOCK bypasses"
