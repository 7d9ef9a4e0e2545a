"""The model backends as real backends: the protocol, the slot allocator on
them unchanged, their errors and their stats."""

from __future__ import annotations

import pytest

from secretvault.api.errors import BackendError, InvalidArgument, MemlockExceeded, PoolExhausted
from secretvault.backends import SecretMemoryBackend, SlotAllocator, _sodium
from secretvault.backends.model import (
    MODEL_BACKENDS,
    QUIET,
    Machine,
    ModelBackend,
    PageModelBackend,
    PooledPmdModelBackend,
    make_model_backend,
)

MiB = 1 << 20
PAGE = 4096


def small(name: str, **kw: object) -> ModelBackend:
    return make_model_backend(
        name,
        memory_bytes=256 * MiB,
        cma_bytes=16 * MiB,
        workload=QUIET,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=MODEL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> ModelBackend:
    b = small(request.param, memlock_limit=None)
    yield b
    b.close()


def test_names_and_protection() -> None:
    assert MODEL_BACKENDS == ("page-model", "pooled-pmd-model")
    for name in MODEL_BACKENDS:
        b = small(name)
        assert isinstance(b, SecretMemoryBackend)
        assert (b.name, b.protection) == (name, "model")
        b.close()
    with pytest.raises(InvalidArgument, match="unknown model backend 'memfd'"):
        make_model_backend("memfd")
    with pytest.raises(InvalidArgument, match="at least 64 MiB"):
        make_model_backend("page-model", memory_bytes=MiB)
    with pytest.raises(InvalidArgument, match="at most half"):
        make_model_backend("pooled-pmd-model", memory_bytes=256 * MiB, cma_bytes=256 * MiB)


def test_default_constructors_boot_their_own_machines() -> None:
    page = PageModelBackend(Machine(memory_bytes=128 * MiB, workload=QUIET))
    pooled = PooledPmdModelBackend(
        Machine(memory_bytes=128 * MiB, cma_bytes=8 * MiB, workload=QUIET), fallback=True
    )
    assert page.name == "page-model" and pooled.name == "pooled-pmd-model"
    assert dict(pooled.statistics().extra)["fallback"] == 1.0


def test_regions_are_real_zeroed_writable_memory_faulted_at_allocate(
    backend: ModelBackend,
) -> None:
    r = backend.allocate(5)
    assert r.address % PAGE == 0 and r.length == 5 * PAGE
    p = _sodium.pointer(r.address)
    assert _sodium.sodium_is_zero(p, r.length)
    _sodium.randombytes_buf(p, r.length)
    assert not _sodium.sodium_is_zero(p, r.length)
    s = backend.statistics()
    assert (s.regions, s.pages_mapped, s.pages_resident) == (1, 5, 5)
    assert len(backend.frames(r)) == 5
    backend.free(r)
    with pytest.raises(BackendError, match="not this backend's"):
        backend.free(r)


def test_slot_allocator_runs_unchanged_on_the_models(backend: ModelBackend) -> None:
    alloc = SlotAllocator(backend)
    slots = [alloc.allocate(64) for _ in range(200)]
    pk = _sodium.ffi.new("unsigned char[32]")
    for s in slots[:3]:
        _sodium.lib.crypto_sign_keypair(pk, s.ptr)  # libsodium writes in place
        assert not _sodium.sodium_is_zero(s.ptr, 64)
    stats = alloc.statistics()
    assert stats.protection == "model" and stats.backend == backend.name
    assert stats.direct_map.source == "model"
    assert stats.key_bytes == 200 * 64
    for s in slots:
        s.free()
    alloc.close()
    assert backend.statistics().regions == 0


def test_touch_faults_one_page_at_a_time() -> None:
    b = make_model_backend(
        "page-model", memory_bytes=256 * MiB, workload=QUIET, fault_on_allocate=False
    )
    r = b.allocate(16)
    assert b.statistics().pages_resident == 0
    assert b.machine.memcgs["/"].charged == 0
    b.touch(r.address + 3 * PAGE + 17)
    (pfn,) = b.frames(r)
    b.touch(r.address + 3 * PAGE)  # same page: no new fault
    assert b.frames(r) == [pfn]
    b.touch(r.address)
    s = b.statistics()
    assert s.pages_resident == 2 and s.pages_mapped == 16
    assert dict(s.extra)["memcg_charged_bytes"] == 2 * PAGE
    with pytest.raises(BackendError, match="in no region"):
        b.touch(r.address + 16 * PAGE)
    b.close()


def test_pool_exhaustion_surfaces_from_allocate_and_leaves_nothing_behind() -> None:
    b = make_model_backend(
        "pooled-pmd-model",
        memory_bytes=256 * MiB,
        cma_bytes=4 * MiB,
        workload=QUIET,
        memlock_limit=None,
    )
    b.allocate(1)
    b.allocate(1)
    with pytest.raises(PoolExhausted, match="2 of its 2 chunks") as refused:
        b.allocate(1)
    # v16 would have OOM-killed the faulting process; the backend says so and
    # refuses instead, so the vault running on it stays up
    assert "VM_FAULT_OOM" in str(refused.value) and "stays up" in str(refused.value)
    assert not b.process.killed
    s = b.statistics()
    assert s.regions == 2
    assert dict(s.extra)["allocation_failures"] == 1
    assert dict(s.extra)["oom_kills"] == 0
    assert b.process.locked_vm == 2 * PAGE  # the failed region was released
    b.close()


def test_fallback_option_makes_the_same_request_succeed() -> None:
    b = make_model_backend(
        "pooled-pmd-model",
        memory_bytes=256 * MiB,
        cma_bytes=4 * MiB,
        workload=QUIET,
        memlock_limit=None,
        fallback=True,
    )
    for _ in range(3):
        b.allocate(1)
    extra = dict(b.statistics().extra)
    assert extra["fallback_pages"] == 1 and extra["allocation_failures"] == 0
    b.close()


def test_model_rlimit_refuses_before_any_real_memory_is_locked() -> None:
    b = small("page-model", memlock_limit=8 * PAGE)
    b.allocate(8)
    with pytest.raises(MemlockExceeded, match="RLIMIT_MEMLOCK 32768 bytes"):
        b.allocate(1)
    assert b.statistics().regions == 1
    b.close()


def test_statistics_carry_the_models_own_counters(backend: ModelBackend) -> None:
    backend.allocate(3)
    s = backend.statistics()
    dm = s.direct_map
    assert dm.source == "model"
    assert s.hibernation_inhibited is False
    assert dm.distinct_2m_regions == 1 and dm.distinct_1g_regions == 1
    extra = dict(s.extra)
    for key in (
        "faults",
        "allocation_failures",
        "pool_waste_bytes",
        "memcg_charged_bytes",
        "memcg_overcharge_bytes",
        "mlocked_bytes",
        "locked_vm_bytes",
    ):
        assert key in extra
    assert extra["mlocked_bytes"] == 3 * PAGE
    assert extra["locked_vm_bytes"] == 3 * PAGE
    if backend.name == "page-model":
        assert dm.level2_splits == 1
        assert dm.directmap_4k_delta == 2 * MiB
        assert extra["memcg_overcharge_bytes"] == 0 and extra["pool_waste_bytes"] == 0
    else:
        assert dm.level2_splits == 0 and dm.directmap_4k_delta == 0
        assert extra["memcg_charged_bytes"] == 2 * MiB
        assert extra["memcg_overcharge_bytes"] == 2 * MiB - 3 * PAGE
        assert extra["pool_waste_bytes"] == 2 * MiB - 3 * PAGE


def test_inherited_memlock_limit_follows_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from secretvault.backends.model import _backend

    monkeypatch.setattr(_backend._sys, "memlock_rlimit", lambda: (65536, 65536))
    monkeypatch.setattr(_backend._procfs, "has_cap_ipc_lock", lambda: False)
    assert _backend.inherited_memlock_limit() == 65536
    monkeypatch.setattr(_backend._procfs, "has_cap_ipc_lock", lambda: True)
    assert _backend.inherited_memlock_limit() is None
    with pytest.raises(InvalidArgument, match="memlock_limit"):
        make_model_backend("page-model", memlock_limit=-5)


def test_the_slot_allocator_faults_model_pages_as_it_first_uses_them() -> None:
    """As on memfd_secret: a page counts (resident, charged, split) only
    once a slot in it is used, not when its region is mapped."""
    b = make_model_backend(
        "page-model", memory_bytes=256 * MiB, workload=QUIET, fault_on_allocate=False
    )
    alloc = SlotAllocator(b)
    slots = [alloc.allocate(64) for _ in range(65)]  # 64 per page: two pages
    s = b.statistics()
    assert s.pages_mapped == 16 and s.pages_resident == 2
    assert dict(s.extra)["memcg_charged_bytes"] == 2 * PAGE
    for slot in slots:
        slot.free()
    alloc.close()
