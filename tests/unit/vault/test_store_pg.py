"""PostgreSQLStore against a real PostgreSQL server (``tests/_pg.py``).

The rules of the SQLite store (one transaction per change, KeyExists, the
feed's numbering) on PostgreSQL, what every session is checked for
(synchronous_commit on), and the one line each start failure gets, none of
which ever shows the password.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from secretvault.api.errors import (
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    StoreRefused,
    StoreUnavailable,
    VersionNotFound,
)
from secretvault.vault.store_pg import SCHEMA_VERSION, PostgreSQLStore, describe, is_postgresql
from secretvault.vault.store_pg_session import (
    IDLE_IN_TRANSACTION_SECONDS,
    SERVER_STATEMENT_SECONDS,
    SESSION_BOUNDS,
    STORE_CALL_SECONDS,
    _Call,
)
from secretvault.vault.store_protocol import AlreadyInitialised, KeyRecord, StaleFeed, VersionRecord
from tests import _pg


def _v(n: int) -> VersionRecord:
    return VersionRecord(n, 1.0, None, bytes([n]) * 24, bytes([n]) * 48, created_by="alice")


def _k(name: str) -> KeyRecord:
    return KeyRecord(name, "hmac-sha256", 1.0, 1, 1, {"l": "v"}, row_mac=b"m1")


def test_every_session_commits_durably(pg_url: str) -> None:
    store = PostgreSQLStore(pg_url)
    try:
        conn = store.connect()
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        conn.close()
        assert store.describe == describe(pg_url)
    finally:
        store.close()


def test_every_session_bounds_its_statements_and_locks(pg_url: str) -> None:
    """The server's side of STORE_CALL_SECONDS: a replica frozen mid-change holds the
    feed's row lock (which orders every writer) for at most that long."""
    store = PostgreSQLStore(pg_url)
    # an operator's own setting, in the URL's options, is kept
    own = PostgreSQLStore(pg_url + "&options=-c%20lock_timeout%3D3s")
    try:
        conn = store.connect()
        for setting, seconds in SESSION_BOUNDS.items():
            assert conn.execute(f"SHOW {setting}").fetchone() == (f"{seconds}s",), setting
        conn.close()
        conn = own.connect()
        assert conn.execute("SHOW lock_timeout").fetchone() == ("3s",)
        assert conn.execute("SHOW statement_timeout").fetchone() == (
            f"{SERVER_STATEMENT_SECONDS}s",)
        conn.close()
    finally:
        store.close()
        own.close()


def test_a_session_idle_in_a_transaction_past_the_bound_is_ended(pg_url: str) -> None:
    """A writer that stops mid-transaction (frozen, not disconnected) gives the feed's
    row lock back within the bound, so the other replicas' changes go on."""
    store = PostgreSQLStore(pg_url)
    stuck = store.connect()
    try:
        stuck.execute("BEGIN")
        stuck.execute("UPDATE secretvault.feed SET seq = seq WHERE id = 1")  # the row lock
        t0 = time.monotonic()
        store.create_key(_k("after-the-stuck-one"), _v(1))  # waits for the lock, then goes
        waited = time.monotonic() - t0
        assert IDLE_IN_TRANSACTION_SECONDS - 1 < waited < STORE_CALL_SECONDS, waited
        assert stuck.broken or stuck.closed or _is_ended(stuck)
    finally:
        stuck.close()
        store.close()


def _is_ended(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return True
    return False


def test_loading_the_store_may_take_longer_than_a_change_idles(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the whole store makes its rows into records inside the transaction,
    which the server counts as idle in it: a big store (or a busy host) takes
    longer than IDLE_IN_TRANSACTION_SECONDS, and the load must still succeed."""
    import secretvault.vault.store_pg as store_pg

    store = PostgreSQLStore(pg_url)
    try:
        store.create_key(_k("a"), _v(1))
        real = store_pg.VersionRecord
        slow = {"left": 1}

        def record(*args: Any, **kwargs: Any) -> VersionRecord:
            if slow["left"]:
                slow["left"] -= 1
                time.sleep(IDLE_IN_TRANSACTION_SECONDS + 1.5)
            return real(*args, **kwargs)

        monkeypatch.setattr(store_pg, "VersionRecord", record)
        assert [k.name for k in store.load()] == ["a"]
    finally:
        store.close()


def test_a_cut_reaches_a_session_only_while_its_call_runs(pg_url: str) -> None:
    """The bound's timer and the call's end take turns: a call cut as it ends keeps its
    answer and closes its session (the next call connects again); a timer that fires
    after the end touches nothing (the descriptor may already be another socket's)."""
    store = PostgreSQLStore(pg_url)
    try:
        conn = store.connect()
        with store._pg.bounded(conn, 0.05):
            time.sleep(0.3)  # no statement in flight: the cut lands, the call "succeeds"
        assert conn.closed  # not left shut down for the next call to trip on
        conn = store.connect()
        late = _Call(conn)
        assert late.end() is False
        late.cut()  # fired after the end: nothing happens
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.close()
        assert store.feed_head() == 0  # and the store's own session is unharmed
    finally:
        store.close()


def test_key_lifecycle_and_the_feed(pg_url: str) -> None:
    store = PostgreSQLStore(pg_url)
    try:
        assert store.feed_head() == 0 and store.get_meta("store_id") is None
        store.init_meta({"store_id": b"x" * 16})
        with pytest.raises(AlreadyInitialised):
            store.init_meta({"store_id": b"y" * 16})
        assert store.get_meta("store_id") == b"x" * 16
        store.create_key(_k("a"), _v(1))
        with pytest.raises(KeyExists):
            store.create_key(_k("a"), _v(1))
        store.create_key(_k("b"), _v(1), kind="import")
        store.add_version("a", _v(2), row_mac=b"m2")
        with pytest.raises(KeyNotFound):
            store.add_version("zz", _v(2), row_mac=b"m")
        store.set_min_decryption_version("a", 2, row_mac=b"m3")
        store.delete_version("a", 1, row_mac=b"m4")
        with pytest.raises(VersionNotFound):
            store.delete_version("a", 1, row_mac=b"m")
        store.delete_key("b")
        a = store.load_key("a")
        assert a is not None and a.damaged is None
        assert (a.primary_version, a.min_decryption_version, a.row_mac) == (2, 2, b"m4")
        assert [v.version for v in a.versions] == [2]
        assert a.versions[0].created_by == "alice"
        assert store.load_key("b") is None
        assert [k.name for k in store.load()] == ["a"]
        # refused changes took no number: the feed has no gap
        changes = store.changes(0, 100)
        assert [(c.seq, c.kind, c.name, c.version) for c in changes] == [
            (1, "create", "a", 1), (2, "import", "b", 1), (3, "rotate", "a", 2),
            (4, "min_decryption_version", "a", 2), (5, "delete_version", "a", 1),
            (6, "delete_key", "b", None)]
        assert store.position == store.feed_head() == 6
        assert [c.seq for c in store.changes(4, 1)] == [5]
        assert store.integrity_check() == []
    finally:
        store.close()


def test_a_stale_writer_is_refused_only_for_a_key_it_has_not_seen_change(
        pg_url: str) -> None:
    one, two = PostgreSQLStore(pg_url), PostgreSQLStore(pg_url)
    try:
        one.create_key(_k("a"), _v(1))
        with pytest.raises(StaleFeed) as e:
            two.add_version("a", _v(2), row_mac=b"m")
        assert e.value.head == 1 and two.feed_head() == 1
        two.create_key(_k("b"), _v(1))  # another key: not held up
        assert two.position == 0 and two.feed_head() == 2
        two.position = 2
        two.add_version("a", _v(2), row_mac=b"m")
        assert two.position == 3
        with pytest.raises(StaleFeed):  # one has not seen change 3, on "a"
            one.add_version("a", _v(3), row_mac=b"m")
    finally:
        one.close()
        two.close()


def test_writers_serialise_on_the_counter(pg_url: str) -> None:
    """Eight writers at once: every change gets the next number, none twice, none skipped."""
    stores = [PostgreSQLStore(pg_url) for _ in range(8)]

    def writer(i: int, store: PostgreSQLStore) -> None:
        for j in range(10):
            store.create_key(_k(f"k{i}-{j}"), _v(1))  # other keys' changes never refuse it

    threads = [threading.Thread(target=writer, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        changes = stores[0].changes(0, 1000)
        assert [c.seq for c in changes] == list(range(1, 81))
        assert len({c.name for c in changes}) == 80
    finally:
        for s in stores:
            s.close()


def test_a_wake_up_comes_with_each_commit(pg_url: str) -> None:
    store, other = PostgreSQLStore(pg_url), PostgreSQLStore(pg_url)
    waiter = store.waiter()
    try:
        waiter.wait(0.01)  # connects and listens
        woke = threading.Event()

        def wait() -> None:
            waiter.wait(10)
            woke.set()

        t = threading.Thread(target=wait)
        t.start()
        other.create_key(_k("a"), _v(1))
        assert woke.wait(5), "no NOTIFY reached the waiter"
        t.join()
    finally:
        waiter.close()
        store.close()
        other.close()


def test_start_failures_are_one_line_without_the_password(pg_server: _pg.PgServer,
                                                          pg_url: str) -> None:
    secret = _pg.PASSWORD
    with_password = pg_server.conninfo("nodb", password=True)
    with pytest.raises(StoreRefused, match="the database nodb does not exist") as e:
        PostgreSQLStore(with_password)
    assert secret not in str(e.value) and "createdb nodb" in e.value.fix
    wrong = pg_url.replace("vault@", "vault:not-the-password@")
    with pytest.raises(StoreRefused, match="authentication failed") as e:
        PostgreSQLStore(wrong)
    assert "not-the-password" not in str(e.value) and "PGPASSWORD" in e.value.fix
    for bad in ("host=a password", "nonsense words", f"password={secret} x"):
        with pytest.raises(InvalidArgument, match="not a PostgreSQL connection string") as ei:
            PostgreSQLStore(bad)
        assert secret not in str(ei.value)
    with pytest.raises(StoreUnavailable, match="cannot reach the key store") as eu:
        PostgreSQLStore(f"postgresql://vault:{secret}@/x?host=/nonexistent-dir")
    assert secret not in str(eu.value)
    assert "\n" not in str(eu.value)
    assert describe(with_password) == pg_server.conninfo("nodb")
    assert is_postgresql(pg_url) and is_postgresql("host=x") and not is_postgresql("/a/b")


def test_another_schema_version_is_refused(pg_server: _pg.PgServer, pg_url: str) -> None:
    PostgreSQLStore(pg_url).close()
    with psycopg.connect(pg_url, password=_pg.PASSWORD, autocommit=True) as conn:
        conn.execute("UPDATE secretvault.schema_version SET version = 0")
    with pytest.raises(StoreRefused, match=f"version 0, older than this vault's "
                       f"{SCHEMA_VERSION}") as e:
        PostgreSQLStore(pg_url)
    assert "restore" in e.value.fix
    with psycopg.connect(pg_url, password=_pg.PASSWORD, autocommit=True) as conn:
        conn.execute("UPDATE secretvault.schema_version SET version = 99")
    with pytest.raises(StoreRefused, match="newer than"):
        PostgreSQLStore(pg_url)


def test_the_feed_keeps_only_its_retention(pg_url: str) -> None:
    store = PostgreSQLStore(pg_url)
    try:
        store.feed_retain = 2
        for i in range(5):
            store.create_key(_k(f"k{i}"), _v(1))
        # pruned at change 4 (every 2, keeping 2): 3, 4 and the later 5 are left
        assert [c.seq for c in store.changes(0, 100)] == [3, 4, 5]
    finally:
        store.close()
