"""Held keys and the lock: slots zeroed on removal, expiry and close."""

from __future__ import annotations

import time

import pytest

from secretvault.api.errors import StoreSealed
from secretvault.backends import Slot, SlotAllocator, _sodium
from secretvault.vault.agent.held import AgentViews, HeldKey


def _filled(allocator: SlotAllocator, data: bytes) -> Slot:
    slot = allocator.allocate(max(1, len(data)))
    _sodium.ffi.memmove(slot.ptr, data, len(data))
    return slot


def test_keys_are_held_replaced_removed_and_zeroed(allocator: SlotAllocator) -> None:
    views = AgentViews(allocator, max_keys=2)
    a, b = _filled(allocator, b"a" * 64), _filled(allocator, b"b" * 64)
    with views.view("dev") as view:
        view.add(HeldKey(b"A" * 32, b"one", a))
        view.add(HeldKey(b"A" * 32, b"again", b))  # the same public key: replaced
        assert a.freed and not b.freed
        assert [k.comment for k in view.keys(time.monotonic())] == [b"again"]
        assert not view.full(b"B" * 32) and not view.full(b"A" * 32)
        assert view.remove(b"A" * 32) is not None and b.freed
        assert view.remove(b"A" * 32) is None
    with views.view("other") as other:
        assert other.keys(time.monotonic()) == []  # each identity its own view
    views.close()


def test_the_cap_on_keys(allocator: SlotAllocator) -> None:
    views = AgentViews(allocator, max_keys=1)
    with views.view("dev") as view:
        view.add(HeldKey(b"A" * 32, b"", _filled(allocator, b"x")))
        assert view.full(b"B" * 32)
    views.close()


def test_a_lifetime_expires_the_key_and_zeroes_it(allocator: SlotAllocator) -> None:
    views = AgentViews(allocator, max_keys=4)
    slot = _filled(allocator, b"k" * 64)
    with views.view("dev") as view:
        view.add(HeldKey(b"A" * 32, b"", slot, expires=time.monotonic() - 1))
        assert view.find(b"A" * 32, time.monotonic()) is None
    assert slot.freed
    slot2 = _filled(allocator, b"k" * 64)
    with views.view("dev") as view:
        view.add(HeldKey(b"B" * 32, b"", slot2, expires=time.monotonic() + 0.05))
    time.sleep(0.1)
    gone = views.sweep()
    assert [(i, k.public) for i, k in gone] == [("dev", b"B" * 32)] and slot2.freed
    views.close()


def test_lock_and_unlock(allocator: SlotAllocator) -> None:
    views = AgentViews(allocator, max_keys=4)
    right, wrong = _filled(allocator, b"pass one"), _filled(allocator, b"pass two")
    with views.view("dev") as view:
        assert not view.unlock_with(right, 8)  # not locked
        assert view.lock_with(right, 8) and view.locked
        assert not view.lock_with(right, 8)  # already locked
        assert not view.unlock_with(wrong, 8) and view.locked
        assert not view.unlock_with(right, 7) and view.locked  # a prefix is not it
        assert view.unlock_with(right, 8) and not view.locked
        empty = _filled(allocator, b"")
        assert view.lock_with(empty, 0) and view.unlock_with(empty, 0)  # ssh-add -x with ""
        empty.free()
    right.free()
    wrong.free()
    passphrase = _filled(allocator, b"x")
    with views.view("dev") as view:
        view.lock_with(passphrase, 1)
    passphrase.free()  # the passphrase's slot is the caller's: only the tag is kept
    with views.view("dev") as view:
        tag = view._tag
    views.close()
    assert tag is not None and tag.freed  # close zeroes the tag too
    with pytest.raises(StoreSealed), views.view("dev"):
        pass
