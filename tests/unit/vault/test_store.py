"""SQLiteStore: the schema's rules, WAL + synchronous=FULL, integrity checks."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

import pytest

from secretvault.api.errors import KeyExists, KeyNotFound, StoreError, VersionNotFound
from secretvault.vault.store import KeyRecord, SQLiteStore, VersionRecord
from secretvault.vault.store_protocol import StaleFeed


def _v(n: int, created: float = 1.0) -> VersionRecord:
    return VersionRecord(n, created, None, bytes([n]) * 24, bytes([n]) * 48)


def _k(name: str, kind: str = "hmac-sha256") -> KeyRecord:
    return KeyRecord(name, kind, 1.0, 1, 1, {"l": "v"})


def test_durability_settings(store: SQLiteStore, store_path: str) -> None:
    assert stat.S_IMODE(os.stat(store_path).st_mode) == 0o600
    (mode,) = store._db.execute("PRAGMA journal_mode").fetchone()
    (sync,) = store._db.execute("PRAGMA synchronous").fetchone()
    assert mode == "wal"
    assert sync == 2  # FULL: the WAL is fsynced at every commit
    # journal_mode=WAL is a property of the file: another connection sees it
    other = sqlite3.connect(store_path)
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()


def test_meta_is_written_once(store: SQLiteStore) -> None:
    assert store.get_meta("store_id") is None
    store.init_meta({"store_id": b"x" * 16, "format": b"1"})
    assert store.get_meta("store_id") == b"x" * 16
    with pytest.raises(sqlite3.IntegrityError):
        store.init_meta({"store_id": b"y" * 16})
    assert store.get_meta("store_id") == b"x" * 16


def test_key_lifecycle(store: SQLiteStore, store_path: str) -> None:
    store.create_key(_k("a"), _v(1))
    store.create_key(_k("b", "ed25519"), VersionRecord(1, 2.0, b"p" * 32, b"n" * 24, b"s" * 80))
    with pytest.raises(KeyExists):
        store.create_key(_k("a"), _v(1))
    store.add_version("a", _v(2), row_mac=b"m")
    store.add_version("a", _v(3), row_mac=b"m")
    with pytest.raises(KeyNotFound):
        store.add_version("zz", _v(2), row_mac=b"m")
    store.set_min_decryption_version("a", 2, row_mac=b"m")
    with pytest.raises(KeyNotFound):
        store.set_min_decryption_version("zz", 2, row_mac=b"m")
    store.delete_version("a", 1, row_mac=b"m")
    with pytest.raises(VersionNotFound):
        store.delete_version("a", 1, row_mac=b"m")
    assert store.count() == 3

    reopened = SQLiteStore(store_path)
    # a new handle is at the feed's start until the keyring says where it is
    assert reopened.position == 0 and reopened.feed_head() == store.position == 6
    reopened.position = reopened.feed_head()
    a, b = list(reopened.load())
    assert (a.name, a.type) == ("a", "hmac-sha256")
    assert (a.primary_version, a.min_decryption_version) == (3, 2)
    assert a.labels == {"l": "v"}
    assert [v.version for v in a.versions] == [2, 3]
    assert a.versions[0] == _v(2)
    assert b.versions[0].public_key == b"p" * 32
    assert reopened.integrity_check() == []

    reopened.delete_key("a")
    with pytest.raises(KeyNotFound):
        reopened.delete_key("a")
    assert [r.name for r in reopened.load()] == ["b"]
    assert reopened.count() == 1
    reopened.close()


def test_failed_transaction_leaves_nothing(store: SQLiteStore) -> None:
    store.create_key(_k("a"), _v(1))
    # a duplicate version aborts the add: the primary version stays 1
    with pytest.raises(sqlite3.IntegrityError):
        store.add_version("a", _v(1), row_mac=b"m")
    (rec,) = store.load()
    assert rec.primary_version == 1 and len(rec.versions) == 1


def test_integrity_check_finds_a_missing_primary(store: SQLiteStore, store_path: str) -> None:
    store.create_key(_k("a"), _v(1))
    db = sqlite3.connect(store_path)
    db.execute("DELETE FROM key_versions WHERE name = 'a'")
    db.commit()
    db.close()
    assert store.integrity_check() == ["key 'a': primary version 1 has no record"]


def test_integrity_check_finds_an_orphan_version(store: SQLiteStore, store_path: str) -> None:
    store.create_key(_k("a"), _v(1))
    db = sqlite3.connect(store_path)  # foreign keys are off by default here
    db.execute("UPDATE key_versions SET name = 'ghost' WHERE name = 'a'")
    db.commit()
    db.close()
    problems = store.integrity_check()
    assert "foreign key violation in key_versions" in problems


def test_not_a_database(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "junk")
    with open(path, "wb") as f:
        f.write(b"this is not sqlite" * 500)
    with pytest.raises(StoreError, match="cannot open the key store"):
        SQLiteStore(path)


def _on_disk(store_path: str) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-journal"):
        if os.path.exists(store_path + suffix):
            with open(store_path + suffix, "rb") as f:
                data += f.read()
    return data


@pytest.mark.parametrize("what", ["key", "version"])
def test_deletion_removes_the_sealed_copy_from_disk(
    store: SQLiteStore, store_path: str, what: str
) -> None:
    """After a deletion no file of the store holds the sealed record."""
    marker = b"\xa5SEALED-RECORD-MARKER\x5a" * 3

    def version(n: int) -> VersionRecord:
        return VersionRecord(n, 1.0, None, b"n" * 24, marker + bytes([n]))

    store.create_key(_k("gone"), version(1))
    store.add_version("gone", version(2), row_mac=b"m")
    assert marker + b"\x01" in _on_disk(store_path)
    if what == "key":
        store.delete_key("gone")
        assert marker not in _on_disk(store_path)
    else:
        store.delete_version("gone", 1, row_mac=b"m")
        assert marker + b"\x01" not in _on_disk(store_path)
        assert marker + b"\x02" in _on_disk(store_path)


@pytest.mark.parametrize(
    ("code", "error"),
    [(sqlite3.SQLITE_FULL, "StoreFull"), (sqlite3.SQLITE_BUSY, "StoreBusy"),
     (sqlite3.SQLITE_IOERR, "StoreError")],
)
def test_sqlite_failures_map_to_typed_errors(code: int, error: str) -> None:
    from secretvault.vault.sqlite_errors import store_error

    e = sqlite3.OperationalError("boom")
    e.sqlite_errorcode = code  # type: ignore[attr-defined]
    assert type(store_error(e)).__name__ == error


def test_a_locked_store_is_store_busy_and_changes_nothing(
    store: SQLiteStore, store_path: str
) -> None:
    from secretvault.api.errors import StoreBusy

    other = sqlite3.connect(store_path, isolation_level=None)
    other.execute("PRAGMA busy_timeout=0")
    other.execute("BEGIN EXCLUSIVE")
    store._db.execute("PRAGMA busy_timeout=50")
    try:
        with pytest.raises(StoreBusy):
            store.create_key(_k("blocked"), _v(1))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert [k.name for k in store.load()] == []


def test_the_feed_numbers_every_change_without_a_gap(store: SQLiteStore, store_path: str) -> None:
    store.create_key(_k("a"), _v(1))
    with pytest.raises(KeyExists):
        store.create_key(_k("a"), _v(1))
    store.create_key(_k("b"), _v(1), kind="import")
    store.add_version("a", _v(2), row_mac=b"m")
    store.set_min_decryption_version("a", 2, row_mac=b"m")
    store.delete_version("a", 1, row_mac=b"m")
    store.delete_key("b")
    assert [(c.seq, c.kind, c.name, c.version) for c in store.changes(0, 100)] == [
        (1, "create", "a", 1), (2, "import", "b", 1), (3, "rotate", "a", 2),
        (4, "min_decryption_version", "a", 2), (5, "delete_version", "a", 1),
        (6, "delete_key", "b", None)]
    assert store.feed_head() == store.position == 6
    a = store.load_key("a")
    assert a is not None and [v.version for v in a.versions] == [2]
    assert store.load_key("b") is None


def test_a_stale_writer_is_refused_only_for_a_key_it_has_not_seen_change(
        store: SQLiteStore, store_path: str) -> None:
    other = SQLiteStore(store_path)
    try:
        store.create_key(_k("a"), _v(1))
        # other has not applied change 1, which touched "a": refused, nothing written
        with pytest.raises(StaleFeed) as e:
            other.add_version("a", _v(2), row_mac=b"m")
        assert e.value.head == 1 and other.feed_head() == 1
        # another key is not held up by it; other's position stays (change 1 unapplied)
        other.create_key(_k("b"), _v(1))
        assert other.position == 0 and other.feed_head() == 2
        assert other.load_key("b") is not None
    finally:
        other.close()


def test_data_version_wakes_the_follower(store: SQLiteStore, store_path: str) -> None:
    waiter = store.waiter()
    other = SQLiteStore(store_path)
    try:
        start = time.monotonic()
        waiter.wait(0.05)  # nothing committed: the whole timeout
        assert time.monotonic() - start >= 0.05
        other.create_key(_k("a"), _v(1))
        start = time.monotonic()
        waiter.wait(10)
        assert time.monotonic() - start < 1, "a commit by another connection did not wake it"
    finally:
        waiter.close()
        other.close()


def test_the_feed_keeps_only_its_retention(store: SQLiteStore) -> None:
    store.feed_retain = 2
    for i in range(5):
        store.create_key(_k(f"k{i}"), _v(1))
    assert [c.seq for c in store.changes(0, 100)] == [3, 4, 5]
