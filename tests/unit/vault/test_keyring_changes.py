"""Two keyrings over one store: every change is made on the store's real state.

Each keyring is a process's copy of the keys (here both in this process, each
with its own store handle and slots).  A change made on a stale copy is
refused by the store (the feed moved) and made again after applying the
other's changes: no name is created twice, no version number is given twice,
and a deleted key's slots are zeroed in the other keyring too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from secretvault.api import framing
from secretvault.api.errors import KeyExists, KeyNotFound, StoreBusy
from secretvault.backends import SlotAllocator
from secretvault.vault import keyring_changes
from secretvault.vault.keyring import Keyring
from secretvault.vault.keyring_changes import KeyChanges
from secretvault.vault.sealing import UnsealSource
from secretvault.vault.store import SQLiteStore
from secretvault.vault.store_protocol import StaleFeed
from tests.unit.vault._support import PASSPHRASE, open_ring, raw


@pytest.fixture
def other(allocator: SlotAllocator, store_path: str, ring: Keyring) -> Iterator[Keyring]:
    """A second keyring over ``ring``'s store (opened after it: same unseal material)."""
    store = SQLiteStore(store_path)
    r = open_ring(allocator, store, UnsealSource(passphrase=PASSPHRASE))
    yield r
    r.close()
    store.close()


def test_the_keyring_changes_through_key_changes(ring: Keyring) -> None:
    assert isinstance(ring, KeyChanges)


def test_a_stale_create_of_the_same_name_is_refused(ring: Keyring, other: Keyring) -> None:
    ring.create("k", "ed25519")
    # other has not followed: its create is made on the store's state, not its own
    with pytest.raises(KeyExists):
        other.create("k", "ed25519")
    assert other.get("k").primary_version == 1  # and it caught up doing so


def test_stale_rotations_take_the_next_numbers(ring: Keyring, other: Keyring) -> None:
    ring.create("k", "hmac-sha256")
    assert ring.rotate("k").primary_version == 2
    assert other.rotate("k").primary_version == 3  # not 2: it applied ring's first
    assert ring.rotate("k").primary_version == 4
    ring.follow()
    other.follow()
    for r in (ring, other):
        info = r.get("k")
        assert [v.version for v in info.versions] == [1, 2, 3, 4]
    # the same key material in both: one's MAC verifies in the other
    assert ring.mac("k", b"m") == other.mac("k", b"m")
    assert other.verify_mac("k", b"m", ring.mac("k", b"m")[1])


def test_concurrent_rotations_are_distinct_and_ordered(ring: Keyring, other: Keyring) -> None:
    ring.create("k", "ed25519")
    got: list[int] = []
    lock = threading.Lock()

    def rotate(r: Keyring) -> None:
        for _ in range(15):
            n = r.rotate("k").primary_version
            with lock:
                got.append(n)

    threads = [threading.Thread(target=rotate, args=(r,)) for r in (ring, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(2, 32))
    other.follow()
    ring.follow()
    assert ring.get("k").primary_version == other.get("k").primary_version == 31


def test_a_delete_zeroes_the_other_keyrings_slots(ring: Keyring, other: Keyring) -> None:
    ring.create("k", "xchacha20-poly1305")
    other.follow()
    v = other._keys["k"].versions[1]
    assert v.slot is not None
    address, length = v.slot.address, v.length
    assert raw(address, length) != bytes(length)
    ring.delete("k")
    assert other.follow() == 1
    with pytest.raises(KeyNotFound):
        other.get("k")
    assert raw(address, length) == bytes(length), "the deleted key's slot was not zeroed"


def test_a_keyring_behind_a_pruned_feed_reloads_every_key(ring: Keyring, other: Keyring,
                                                          store: SQLiteStore) -> None:
    """The feed keeps ``feed_retain`` changes: a process further behind than that
    brings every key to its stored state instead, and misses nothing."""
    ring.create("old", "hmac-sha256")
    other.follow()
    v = other._keys["old"].versions[1]
    assert v.slot is not None
    address, length = v.slot.address, v.length
    store.feed_retain = 3  # ring's handle prunes every 3 changes, keeping 3
    for i in range(10):
        ring.create(f"new{i}", "ed25519")
    ring.delete("old")
    first = store.changes(0, 100)[0].seq
    assert first > other._store.position + 1, "the feed was not pruned past other"
    other.follow()
    assert sorted(k.name for k in other.list()) == [f"new{i}" for i in range(10)]
    assert raw(address, length) == bytes(length), "the deleted key's slot was not zeroed"
    assert other._store.position == store.position
    _, sig = other.sign("new3", b"m")
    assert ring.verify("new3", b"m", sig)


def test_following_a_key_while_it_rotates_never_reads_a_torn_row(ring: Keyring,
                                                                 other: Keyring) -> None:
    """A follower reads a key row and its version rows as one snapshot: a rotation
    committed between the two reads must not make it see a row whose MAC does not
    cover the versions read (it would damage, and zero, a sound key)."""
    ring.create("k", "hmac-sha256")
    done = threading.Event()

    def rotate() -> None:
        try:
            for _ in range(60):
                ring.rotate("k")
        finally:
            done.set()

    t = threading.Thread(target=rotate)
    t.start()
    while not done.is_set():
        other.follow()
        assert other._keys["k"].damaged is None, other._keys["k"].damaged
    t.join()
    other.follow()
    assert other.get("k").primary_version == 61 and other.get("k").damaged is None


def test_a_busy_writer_elsewhere_does_not_starve_a_change(ring: Keyring, other: Keyring) -> None:
    """Changes to other keys in between do not refuse a change: while one keyring
    creates as fast as it can, the other's creates all go through."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def hot() -> None:
        i = 0
        while not stop.is_set():
            ring.create(f"hot{i}", "hmac-sha256")
            i += 1

    t = threading.Thread(target=hot)
    t.start()
    try:
        for i in range(40):
            try:
                other.create(f"cold{i}", "hmac-sha256")
            except BaseException as e:  # StoreBusy, before: starved by the hot writer
                errors.append(e)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:2]
    other.follow()
    assert len([k for k in other.list() if k.name.startswith("cold")]) == 40


def test_a_writer_that_lost_the_race_waits_a_growing_random_while(
    ring: Keyring, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the pause, a writer that always wins (another process rotating as
    # fast as it can) could make this one lose every retry and answer StoreBusy.
    pauses: list[float] = []
    monkeypatch.setattr(keyring_changes, "_pause", pauses.append)
    monkeypatch.setattr(keyring_changes.random, "uniform", lambda lo, hi: hi)
    lost = iter(range(5))

    def change() -> str:
        if next(lost, None) is not None:
            raise StaleFeed("another process changed the key")
        return "made"

    assert ring._retrying(change) == "made"
    cap, base = keyring_changes.STALE_PAUSE_CAP, keyring_changes.STALE_PAUSE
    assert pauses == [min(cap, base * 2 ** n) for n in range(5)]


def test_a_writer_that_always_loses_gives_up_with_store_busy(
    ring: Keyring, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keyring_changes, "_pause", lambda _s: None)

    def change() -> str:
        raise StaleFeed("another process changed the key")

    with pytest.raises(StoreBusy, match="retry"):
        ring._retrying(change)


def test_adopt_expands_the_callers_seed_into_a_slot_of_its_own(
    ring: Keyring, other: Keyring, allocator: SlotAllocator,
) -> None:
    # the SSH agent's persisted ssh-add key: the seed is the caller's slot, read
    # (not taken) on every attempt, so a retry after another process's change
    # cannot hand over a slot the first attempt freed
    from nacl.signing import SigningKey

    from secretvault.api.errors import InvalidArgument
    from secretvault.backends import _sodium

    signing = SigningKey.generate()
    public = bytes(signing.verify_key)
    seeded = allocator.allocate(64)
    _sodium.ffi.memmove(_sodium.pointer(seeded.address), bytes(signing) + public, 64)
    other.create("elsewhere", "ed25519")  # ring's copy of the feed is now stale
    info = ring.adopt("agent/k", seeded, public, {"ssh-comment": "me"})
    assert info.name == "agent/k" and not seeded.freed  # still the caller's
    _version, sig = framing.unframe(framing.Kind.SIGNATURE, ring.sign("agent/k", b"m")[1])
    signing.verify_key.verify(b"m", sig)
    with pytest.raises(InvalidArgument, match="does not match"):
        ring.adopt("agent/other", seeded, bytes(32), {})
    assert not seeded.freed
    seeded.free()
