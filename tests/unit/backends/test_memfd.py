"""MemfdSecretBackend: real regions, their accounting and direct-map stats."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from secretvault.api.errors import BackendError
from secretvault.backends import _procfs, _sodium, _sys
from secretvault.backends._base import SecretMemoryBackend
from secretvault.backends._memfd import MemfdSecretBackend
from tests.unit.backends._backends import secret_fds, vma

pytestmark = pytest.mark.memfd_secret
PAGE = _sys.PAGE_SIZE


@pytest.fixture
def backend() -> Iterator[MemfdSecretBackend]:
    b = MemfdSecretBackend()
    yield b
    b.close()


def touch(address: int, pages: int) -> None:
    for i in range(pages):
        _sodium.randombytes_buf(_sodium.pointer(address + i * PAGE), 8)


def test_implements_the_protocol(backend: MemfdSecretBackend) -> None:
    assert isinstance(backend, SecretMemoryBackend)
    assert (backend.name, backend.protection) == ("memfd_secret", "secretmem")


def test_region_is_secret_zeroed_and_charged_up_front(backend: MemfdSecretBackend) -> None:
    before = _sys.vm_locked_bytes()
    r = backend.allocate(5)
    assert r.length == 5 * PAGE and r.address % PAGE == 0
    assert vma(r.address)["path"].startswith("/secretmem")
    assert _sys.vm_locked_bytes() - before == 5 * PAGE
    assert bytes(_sodium.ffi.buffer(_sodium.pointer(r.address), r.length)) == bytes(r.length)


def test_stats_follow_first_touch_and_free(backend: MemfdSecretBackend) -> None:
    st = backend.statistics()
    assert (st.regions, st.pages_mapped, st.pages_resident) == (0, 0, 0)
    assert not st.hibernation_inhibited
    a = backend.allocate(4)
    b = backend.allocate(2)
    st = backend.statistics()
    assert (st.regions, st.pages_mapped, st.pages_resident) == (2, 6, 0)
    assert st.hibernation_inhibited
    touch(a.address, 3)
    touch(b.address, 1)
    st = backend.statistics()
    assert st.pages_resident == 4
    backend.free(a)
    st = backend.statistics()
    assert (st.regions, st.pages_mapped, st.pages_resident) == (1, 2, 1)
    assert vma(a.address) == {}, "freed region is unmapped"
    backend.free(b)
    assert not backend.statistics().hibernation_inhibited


@pytest.mark.root
def test_direct_map_attribution_from_our_own_frames(backend: MemfdSecretBackend) -> None:
    r = backend.allocate(16)
    touch(r.address, 16)
    frames = backend.frames(r)
    assert len(frames) == 16 and len(set(frames)) == 16
    dm = backend.statistics().direct_map
    assert dm.source == "kernel"
    assert (dm.distinct_2m_regions, dm.distinct_1g_regions) == _procfs.distinct_regions(frames)
    assert dm.distinct_2m_regions is not None and 1 <= dm.distinct_2m_regions <= 16
    # the whole of RAM is mapped at one size or another (x86 reports all three)
    assert dm.directmap_4k + dm.directmap_2m + dm.directmap_1g > 0


def test_direct_map_without_frames_reports_none(backend: MemfdSecretBackend) -> None:
    backend.allocate(1)  # never touched: no frame to attribute
    dm = backend.statistics().direct_map
    assert dm.distinct_2m_regions is None and dm.distinct_1g_regions is None


def test_free_refuses_a_foreign_or_freed_region(backend: MemfdSecretBackend) -> None:
    r = backend.allocate(1)
    backend.free(r)
    with pytest.raises(BackendError, match="not this backend's"):
        backend.free(r)
    other = MemfdSecretBackend()
    r2 = other.allocate(1)
    try:
        with pytest.raises(BackendError):
            backend.free(r2)
    finally:
        other.close()


def test_allocate_rejects_empty_regions(backend: MemfdSecretBackend) -> None:
    with pytest.raises(ValueError):
        backend.allocate(0)


def test_close_unmaps_everything(backend: MemfdSecretBackend) -> None:
    before = _sys.vm_locked_bytes()
    regions = [backend.allocate(n) for n in (1, 2, 3)]
    assert _sys.vm_locked_bytes() == before + 6 * PAGE
    backend.close()
    assert all(vma(r.address) == {} for r in regions)
    assert _sys.vm_locked_bytes() == before
    assert backend.statistics().regions == 0


def test_probe_leaves_no_fd_behind() -> None:
    before = secret_fds()
    b = MemfdSecretBackend()
    b.allocate(1)
    assert secret_fds() == before
    b.close()


def test_statistics_is_safe_against_a_concurrent_free() -> None:
    """A stats scan never meets a region unmapped under it (mincore ENOMEM)."""
    import threading
    import time

    from secretvault.backends import SlotAllocator

    alloc = SlotAllocator(
        MemfdSecretBackend(), min_region_pages=1, max_region_pages=1, reserve_regions=0
    )
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            slots = [alloc.allocate(256) for _ in range(64)]  # 4 one-page regions
            for s in slots:
                s.free()

    t = threading.Thread(target=churn)
    t.start()
    calls = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            alloc.statistics()
            calls += 1
    finally:
        stop.set()
        t.join()
        alloc.close()
    assert calls > 10
