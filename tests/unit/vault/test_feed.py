"""The change feed's follower: another process's changes reach this keyring by themselves.

Two vaults (``open_vault``, as the server and the embedded keyring open a
store) over one SQLite store: each follows the feed from its own thread, woken
by ``PRAGMA data_version``.  A change acknowledged by one is served by the
other well within the 1 s bound, without a call to ``follow``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from secretvault.api.errors import KeyNotFound
from secretvault.vault.app import Vault, VaultConfig, open_vault
from secretvault.vault.feed import BACKSTOP_SECONDS, FeedFollower, FeedStatistics
from tests.unit.vault._support import FAST_KDF

BOUND = 1.0


def _until(check: Callable[[], bool], timeout: float = BOUND) -> float:
    """Seconds until ``check()`` holds; fails past ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.002)
    return time.monotonic() - start


def _has(vault: Vault, name: str) -> bool:
    try:
        vault.keyring.get(name)
    except KeyNotFound:
        return False
    return True


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Vault, Vault]]:
    config = VaultConfig(data_dir=str(tmp_path / "data"), socket="", passphrase=b"pw",
                         kdf=FAST_KDF, harden=False, backend="page-model")
    one = open_vault(config)
    two = open_vault(dataclasses.replace(config))
    yield one, two
    two.close()
    one.close()


def test_each_follows_the_other_within_the_bound(pair: tuple[Vault, Vault]) -> None:
    one, two = pair
    one.keyring.create("a", "ed25519")
    _until(lambda: _has(two, "a"))
    two.keyring.rotate("a")
    _until(lambda: one.keyring.get("a").primary_version == 2)
    # the same key: a signature made by one verifies in the other
    _, sig = one.keyring.sign("a", b"m")
    assert two.keyring.verify("a", b"m", sig)
    one.keyring.delete("a")
    _until(lambda: not _has(two, "a"))
    assert one.feed is not None and two.feed is not None
    stats = two.feed.statistics()
    assert isinstance(stats, FeedStatistics)
    assert stats.position == one.store.position == 3
    assert stats.applied == 2  # one's create and delete; its own rotation was not applied
    assert stats.store_reachable and stats.error is None
    assert 0 <= stats.last_lag_seconds < BOUND


def test_reachability_is_told_at_once_and_close_is_prompt(pair: tuple[Vault, Vault]) -> None:
    one, _ = pair
    assert one.feed is not None
    seen: list[bool] = []
    one.feed.on_reachability(seen.append)
    assert seen == [True]
    start = time.monotonic()
    one.feed.close()
    assert time.monotonic() - start < BACKSTOP_SECONDS / 2, "close waited for the backstop"


def test_a_follower_without_wake_ups_still_looks_at_the_backstop(
        pair: tuple[Vault, Vault]) -> None:
    """The slow poll is a backstop: a follower whose wake-up never fires still catches up."""
    one, two = pair
    assert two.feed is not None
    two.feed.close()

    class Deaf:
        def wait(self, timeout: float) -> bool:
            time.sleep(timeout)
            return False

        def close(self) -> None:
            pass

    store = two.store
    real = store.waiter
    store.waiter = Deaf  # type: ignore[assignment,method-assign]
    try:
        follower = FeedFollower(store, two.keyring.follow, two.keyring.applier,
                                backstop_seconds=0.3).start()
        one.keyring.create("b", "hmac-sha256")
        _until(lambda: _has(two, "b"), timeout=2.0)
        follower.close()
    finally:
        store.waiter = real  # type: ignore[method-assign]


def test_the_feed_is_in_stats_metrics_and_the_client_record(pair: tuple[Vault, Vault]) -> None:
    from secretvault.clients._stats import stats_from_wire
    from secretvault.vault.metrics import families
    from secretvault.vault.stats import OperationCounters, StatsSource, to_proto

    one, two = pair
    one.keyring.create("m", "hmac-sha256")
    _until(lambda: _has(two, "m"))
    assert two.feed is not None
    source = StatsSource(two.allocator.statistics, two.keyring.counts_by_type,
                         OperationCounters(), feed=two.feed.statistics)
    snap = source.snapshot()
    record = stats_from_wire(to_proto(snap)).feed
    assert record is not None
    assert (record.store, record.position, record.applied, record.store_reachable) == (
        two.store.describe, 1, 1, True)
    gauges = {m.name: m.samples[0].value for m in families(snap) if m.name.startswith(
        ("secretvault_store_up", "secretvault_feed"))}
    assert gauges == {"secretvault_store_up": 1.0, "secretvault_feed_position": 1.0,
                      "secretvault_feed_applied": 1.0,
                      "secretvault_feed_last_lag_seconds": record.last_lag_seconds}


def test_a_batch_that_fails_part_way_counts_what_it_applied(
    pair: tuple[Vault, Vault], monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = pair
    assert two.feed is not None
    two.feed.close()  # follow by hand below, not from the thread
    one.keyring.create("a", "ed25519")
    one.keyring.create("b", "ed25519")
    applier = two.keyring.applier
    real = applier._refresh

    def refresh(name: str) -> None:
        if name == "b":
            raise OSError("the store went away mid-batch")
        real(name)

    monkeypatch.setattr(applier, "_refresh", refresh)
    start = two.store.position
    with pytest.raises(OSError):
        two.keyring.follow()
    # the first change was applied (the position moved past it), and is counted
    assert two.store.position == start + 1
    assert applier.applied == 1


def test_its_own_change_is_not_counted_as_applied_from_the_feed(
    pair: tuple[Vault, Vault], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change made here while another process's change (to another key) came in
    between: the position stays behind it, the follower later reads both, and
    counts only the other's (``applied`` is what other processes changed)."""
    one, two = pair
    assert two.feed is not None
    two.feed.close()  # follow by hand below, not from the thread
    applier = two.keyring.applier
    real = applier.follow

    def follow_then_race() -> int:
        done = real()
        if not _has(one, "other"):
            one.keyring.create("other", "ed25519")  # lands after two looked, before it writes
        return done

    monkeypatch.setattr(applier, "follow", follow_then_race)
    two.keyring.create("mine", "ed25519")
    monkeypatch.setattr(applier, "follow", real)
    assert two.store.position == 0  # change 1 (one's) came first: change 2 (its own) waits
    two.keyring.follow()
    assert two.store.position == 2
    stats = two.feed.statistics()
    assert stats.applied == 1  # one's "other", not its own "mine"
    assert stats.position == 2
