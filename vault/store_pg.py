"""The PostgreSQL store: many vault processes, on many hosts, over one database.

Chosen by ``serve --store postgresql://...`` (a libpq URL or a conninfo
string).  The password comes only from the URL or libpq's own ``PGPASSWORD``
and ``PGPASSFILE``; no message or log line names it (:func:`describe` is the
store as every message names it: the URL without its password).

The tables live in their own schema, ``secretvault``: the same rows as the
SQLite store (sealed versions, row MACs, metadata) and the change feed
(:mod:`secretvault.vault.store_protocol`).  Every session sets
``synchronous_commit = on`` and checks it took, and the server must run with
``fsync`` on: a change is acknowledged only after its commit is durable.
The feed's counter row is updated first in every changing transaction, so
its row lock serialises writers: change ``N + 1`` waits for ``N`` to commit,
and no reader can see ``N + 1`` without ``N``.  The commit also sends
``NOTIFY secretvault_feed``: a follower's LISTEN wakes at once (only "look":
the numbers say what changed).

When the server cannot be reached, every call raises :class:`StoreUnavailable`
naming the store, and the next call connects again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg

from secretvault.api.errors import KeyExists, KeyNotFound, StoreUnavailable, VersionNotFound
from secretvault.vault.records import KeyRecord, VersionRecord, parse_key_row
from secretvault.vault.store_pg_session import (
    CHANNEL,
    LOAD_SECONDS,
    SCHEMA_LOCK,
    SCHEMA_VERSION,
    STORE_CALL_SECONDS,
    Connector,
    describe,
    is_connection,
    is_postgresql,
)
from secretvault.vault.store_protocol import (
    FEED_RETAIN,
    PRUNE_EVERY,
    AlreadyInitialised,
    Change,
    ChangeKind,
    StaleFeed,
)

__all__ = ["SCHEMA_VERSION", "PostgreSQLStore", "describe", "is_postgresql"]


class PostgreSQLStore:
    """The keyring's rows in a PostgreSQL database (see the module's docstring)."""

    def __init__(self, store: str) -> None:
        self._pg = Connector(store)
        self._name = self._pg.name
        self.position = 0
        self.ahead: set[int] = set()
        self.feed_retain = FEED_RETAIN
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            conn = self._connection()
            with self._pg.bounded(conn):
                self._pg.ensure_schema(conn)

    @property
    def describe(self) -> str:
        return self._name

    # --- connections -------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        """A new checked session (``Connector.connect``)."""
        return self._pg.connect()

    def unavailable(self, e: psycopg.Error) -> StoreUnavailable:
        return self._pg.unavailable(e)

    def bounded(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[None]:
        """One call on ``conn`` within :data:`STORE_CALL_SECONDS` (``Connector.bounded``)."""
        return self._pg.bounded(conn)

    def _connection(self) -> psycopg.Connection[Any]:
        """The store's session (made again after a failure); hold ``_lock``."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self.connect()
        return self._conn

    @contextmanager
    def _session(self, seconds: float = STORE_CALL_SECONDS
                 ) -> Iterator[psycopg.Connection[Any]]:
        """The connection, under the lock, for one call of at most ``seconds``
        (``Connector.bounded``); a lost or hung server is :class:`StoreUnavailable`."""
        # a call stuck on a hung server is cut within its own bound: waiting
        # longer than that behind it means the store is not answering
        if not self._lock.acquire(timeout=STORE_CALL_SECONDS):
            raise self._pg.hung(STORE_CALL_SECONDS)
        try:
            conn = self._connection()
            try:
                with self._pg.bounded(conn, seconds):
                    yield conn
            except psycopg.Error as e:
                if is_connection(e) or conn.broken:
                    conn.close()
                    raise self.unavailable(e) from None
                raise
            except StoreUnavailable:
                conn.close()
                raise
        finally:
            self._lock.release()

    @contextmanager
    def _changing(self, kind: ChangeKind, name: str,
                  version: int | None = None) -> Iterator[psycopg.Connection[Any]]:
        """One transaction numbered ``position + 1`` in the feed (:class:`StaleFeed`
        when another writer took it); the position moves once it has committed."""
        with self._session() as conn:
            with conn.transaction():
                # first, and in one round trip: the counter row's lock orders
                # every writer behind this one; the change row; the wake-up
                # (NOTIFY is delivered at commit, and not at all on rollback)
                row = conn.execute(
                    "WITH s AS (UPDATE secretvault.feed SET seq = seq + 1 WHERE id = 1 "
                    "RETURNING seq), c AS (INSERT INTO secretvault.changes (seq, kind, name, "
                    "version, at) SELECT seq, %s::text, %s::text, %s::bigint, %s::float8 FROM s "
                    "RETURNING seq) "
                    "SELECT seq, pg_notify(%s, seq::text) FROM c",
                    (kind, name, version, time.time(), CHANNEL)).fetchone()
                seq = int(row[0]) if row else 0
                if seq != self.position + 1:
                    seen, mine = _one(conn.execute(
                        "SELECT count(*), count(*) FILTER (WHERE name = %s) FROM "
                        "secretvault.changes WHERE seq > %s AND seq < %s",
                        (name, self.position, seq)))
                    if mine or seen != seq - 1 - self.position:
                        raise StaleFeed(seq - 1)
                if seq % min(PRUNE_EVERY, self.feed_retain) == 0:
                    conn.execute("DELETE FROM secretvault.changes WHERE seq <= %s",
                                 (seq - self.feed_retain,))
                yield conn
            if seq == self.position + 1:
                self.position = seq
            else:
                self.ahead.add(seq)

    # --- the Store protocol ------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        with self._session() as conn:
            row = conn.execute("SELECT value FROM secretvault.meta WHERE key = %s",
                               (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def init_meta(self, items: Mapping[str, bytes]) -> None:
        with self._session() as conn, conn.transaction():
            # two replicas' first starts: the second finds the first's store
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            if conn.execute("SELECT 1 FROM secretvault.meta WHERE key = 'store_id'"
                            ).fetchone() is not None:
                raise AlreadyInitialised()
            for k, v in items.items():
                conn.execute("INSERT INTO secretvault.meta (key, value) VALUES (%s, %s)",
                             (k, v))

    def create_key(self, key: KeyRecord, version: VersionRecord, *,
                   kind: ChangeKind = "create") -> None:
        import json

        try:
            with self._changing(kind, key.name, version.version) as conn:
                conn.execute(
                    "INSERT INTO secretvault.keys (name, type, created, labels, "
                    "primary_version, min_decryption_version, row_mac) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (key.name, key.type, key.created, json.dumps(dict(key.labels),
                                                                 sort_keys=True),
                     version.version, key.min_decryption_version, key.row_mac))
                _insert_version(conn, key.name, version)
        except psycopg.errors.UniqueViolation:
            raise KeyExists(f"a key named {key.name!r} already exists") from None

    def add_version(self, name: str, version: VersionRecord, *, row_mac: bytes) -> None:
        with self._changing("rotate", name, version.version) as conn:
            cur = conn.execute("UPDATE secretvault.keys SET primary_version = %s, row_mac = %s "
                               "WHERE name = %s", (version.version, row_mac, name))
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")
            _insert_version(conn, name, version)

    def set_min_decryption_version(self, name: str, version: int, *, row_mac: bytes) -> None:
        with self._changing("min_decryption_version", name, version) as conn:
            cur = conn.execute("UPDATE secretvault.keys SET min_decryption_version = %s, "
                               "row_mac = %s WHERE name = %s", (version, row_mac, name))
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")

    def delete_version(self, name: str, version: int, *, row_mac: bytes) -> None:
        with self._changing("delete_version", name, version) as conn:
            cur = conn.execute("DELETE FROM secretvault.key_versions WHERE name = %s "
                               "AND version = %s", (name, version))
            if cur.rowcount == 0:
                raise VersionNotFound(f"key {name!r} has no version {version}")
            conn.execute("UPDATE secretvault.keys SET row_mac = %s WHERE name = %s",
                         (row_mac, name))

    def migrate_row_macs(self, macs: Mapping[str, bytes], meta: Mapping[str, bytes]) -> None:
        with self._session() as conn, conn.transaction():
            for name, mac in macs.items():
                conn.execute("UPDATE secretvault.keys SET row_mac = %s WHERE name = %s "
                             "AND row_mac IS NULL", (mac, name))
            for k, v in meta.items():
                conn.execute("INSERT INTO secretvault.meta (key, value) VALUES (%s, %s) "
                             "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (k, v))

    def delete_key(self, name: str) -> None:
        with self._changing("delete_key", name) as conn:
            conn.execute("DELETE FROM secretvault.key_versions WHERE name = %s", (name,))
            cur = conn.execute("DELETE FROM secretvault.keys WHERE name = %s", (name,))
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")

    def _read(self, name: str | None) -> list[KeyRecord]:
        where, params = ("WHERE name = %s ", (name,)) if name is not None else ("", ())
        with self._session(LOAD_SECONDS if name is None else STORE_CALL_SECONDS) as conn, \
                conn.transaction():
            # one snapshot for both reads (set first: before any other statement)
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            if name is None:  # the whole store: its own, longer bounds (its rows
                # are made into records inside the transaction, which the server
                # counts as idle in it)
                conn.execute(f"SET LOCAL statement_timeout = '{LOAD_SECONDS}s'")
                conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = "
                             f"'{LOAD_SECONDS}s'")
            # (where: one of two fixed strings)
            keys = conn.execute(
                "SELECT name, type, created, labels, primary_version, "  # noqa: S608
                "min_decryption_version, row_mac FROM secretvault.keys " + where
                + "ORDER BY name", params).fetchall()
            versions: dict[str, list[VersionRecord]] = {}
            for n, v, created, public, nonce, sealed, by in conn.execute(
                    "SELECT name, version, created, public_key, nonce, sealed, created_by "
                    "FROM secretvault.key_versions " + where + "ORDER BY name, version",
                    params):
                versions.setdefault(n, []).append(VersionRecord(
                    int(v), float(created), None if public is None else bytes(public),
                    bytes(nonce), bytes(sealed), None, by))
        return [parse_key_row([n.encode(), t.encode(), created, labels.encode(), int(p),
                               int(m), None if mac is None else bytes(mac)],
                              tuple(versions.get(n, ())), [], i)
                for i, (n, t, created, labels, p, m, mac) in enumerate(keys, 1)]

    def load(self) -> Iterator[KeyRecord]:
        yield from self._read(None)

    def load_key(self, name: str) -> KeyRecord | None:
        found = self._read(name)
        return found[0] if found else None

    def feed_head(self) -> int:
        with self._session() as conn:
            (seq,) = _one(conn.execute("SELECT seq FROM secretvault.feed WHERE id = 1"))
        return int(seq)

    def changes(self, after: int, limit: int) -> list[Change]:
        with self._session() as conn:
            rows = conn.execute("SELECT seq, kind, name, version, at FROM secretvault.changes "
                                "WHERE seq > %s ORDER BY seq LIMIT %s",
                                (after, limit)).fetchall()
        return [Change(int(s), str(k), str(n), None if v is None else int(v), float(a))
                for s, k, n, v, a in rows]

    def waiter(self) -> ListenWaiter:
        return ListenWaiter(self)

    def count(self) -> int:
        with self._session() as conn:
            (n,) = _one(conn.execute("SELECT count(*) FROM secretvault.key_versions"))
        return int(n)

    def integrity_check(self) -> list[str]:
        with self._session() as conn:
            return [f"key {name!r}: primary version {primary} has no record"
                    for name, primary in conn.execute(
                        "SELECT k.name, k.primary_version FROM secretvault.keys k WHERE NOT "
                        "EXISTS (SELECT 1 FROM secretvault.key_versions v WHERE v.name = "
                        "k.name AND v.version = k.primary_version)")]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


class ListenWaiter:
    """The PostgreSQL follower's wake-up: ``LISTEN secretvault_feed`` on its own session."""

    def __init__(self, store: PostgreSQLStore) -> None:
        self._store = store
        self._conn: psycopg.Connection[Any] | None = None

    def wait(self, timeout: float) -> bool:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = None
            conn = self._store.connect()
            try:
                with self._store.bounded(conn):
                    conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error as e:
                conn.close()
                raise self._store.unavailable(e) from None
            self._conn = conn
            return True  # (re)connected: look now, something may have been missed
        woken = False
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                woken = True
        except psycopg.Error as e:
            self._conn.close()
            raise self._store.unavailable(e) from None
        return woken

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _insert_version(conn: psycopg.Connection[Any], name: str, v: VersionRecord) -> None:
    conn.execute("INSERT INTO secretvault.key_versions (name, version, created, public_key, "
                 "nonce, sealed, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (name, v.version, v.created, v.public_key, v.nonce, v.sealed, v.created_by))




def _one(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return tuple(row)
