"""The HMAC state pool: reserved when the keyring opens, borrowed or waited for, never grown."""

from __future__ import annotations

import threading

import pytest

from secretvault.api.errors import StoreSealed
from secretvault.backends import SlotAllocator
from secretvault.vault.keyring import Keyring
from secretvault.vault.scratch import HMAC_SCRATCH_SLOTS, HmacStates


def _in_use(alloc: SlotAllocator) -> int:
    return next(c.slots_used for c in alloc.statistics().slots if c.size == 256)


def test_the_keyring_reserves_its_hmac_states_when_it_opens(
        allocator: SlotAllocator, ring: Keyring) -> None:
    reserved = _in_use(allocator)
    assert reserved >= HMAC_SCRATCH_SLOTS
    ring.create("m", "hmac-sha256")
    tags = {ring.mac("m", b"x" * 4096)[1] for _ in range(50)}
    assert len(tags) == 1
    # a MAC takes no secret memory of its own: the reserve is what it uses
    assert _in_use(allocator) == reserved


def test_a_caller_waits_for_a_state_when_every_one_is_in_use(allocator: SlotAllocator) -> None:
    pool = HmacStates(allocator, count=1)
    got: list[int] = []
    with pool.borrow() as held:
        t = threading.Thread(target=lambda: got.append(_borrow_address(pool)))
        t.start()
        t.join(0.2)
        assert t.is_alive() and not got  # waiting, not failing, not allocating
    t.join(5)
    assert got == [held.address]
    assert _in_use(allocator) == 1
    pool.close()


def test_close_refuses_whoever_waits(allocator: SlotAllocator) -> None:
    pool = HmacStates(allocator, count=2)
    assert _in_use(allocator) == 2
    errors: list[BaseException] = []
    with pool.borrow(), pool.borrow():
        def wait() -> None:
            try:
                _borrow_address(pool)
            except StoreSealed as e:
                errors.append(e)
        t = threading.Thread(target=wait)
        t.start()
        t.join(0.2)
        pool.close()
        t.join(5)
    assert len(errors) == 1 and "closed" in str(errors[0])


def _borrow_address(pool: HmacStates) -> int:
    with pool.borrow() as s:
        return s.address


def test_a_pool_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        HmacStates(None, count=0)  # type: ignore[arg-type]
