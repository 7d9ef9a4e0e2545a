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
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from secretvault.api.errors import (
    FailedPrecondition,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    VaultError,
    VersionNotFound,
)
from secretvault.vault.records import KeyRecord, VersionRecord, parse_key_row
from secretvault.vault.store_protocol import AlreadyInitialised, Change, ChangeKind, StaleFeed

__all__ = ["SCHEMA_VERSION", "PostgreSQLStore", "describe", "is_postgresql"]

#: the tables' layout; a database with another number is refused at start
SCHEMA_VERSION = 1
CHANNEL = "secretvault_feed"
#: seconds to wait for a connection (libpq's connect_timeout, unless the URL sets one)
CONNECT_TIMEOUT = 5
#: the advisory lock that makes creating the schema one process's job
_SCHEMA_LOCK = 0x5EC12E7
_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS secretvault;
CREATE TABLE IF NOT EXISTS secretvault.schema_version (
    id      integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS secretvault.meta (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS secretvault.keys (
    name                   text PRIMARY KEY,
    type                   text NOT NULL,
    created                double precision NOT NULL,
    labels                 text NOT NULL,
    primary_version        bigint NOT NULL,
    min_decryption_version bigint NOT NULL,
    row_mac                bytea
);
CREATE TABLE IF NOT EXISTS secretvault.key_versions (
    name       text NOT NULL REFERENCES secretvault.keys(name) ON DELETE CASCADE,
    version    bigint NOT NULL,
    created    double precision NOT NULL,
    public_key bytea,
    nonce      bytea NOT NULL,
    sealed     bytea NOT NULL,
    created_by text,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS secretvault.feed (
    id  integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO secretvault.feed (id, seq) VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS secretvault.changes (
    seq     bigint PRIMARY KEY,
    kind    text NOT NULL,
    name    text NOT NULL,
    version bigint,
    at      double precision NOT NULL
);
"""


def is_postgresql(store: str) -> bool:
    """Whether a ``--store`` value names PostgreSQL (a URL, or a conninfo string)."""
    return store.startswith(("postgresql://", "postgres://")) or "=" in store


def _params(store: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(store)
    except psycopg.ProgrammingError:
        # libpq's message quotes part of the string, which may be the password
        raise InvalidArgument(
            "--store is not a PostgreSQL connection string: give a URL "
            "(postgresql://USER@HOST:PORT/DATABASE) or libpq's key=value form "
            "('host=HOST dbname=DATABASE user=USER')") from None


def describe(store: str) -> str:
    """The store as messages name it: a URL with no password (nor any other secret)."""
    p = _params(store)
    host = str(p.get("host") or p.get("hostaddr") or "")
    user = f"{p['user']}@" if p.get("user") else ""
    port = f":{p['port']}" if p.get("port") else ""
    db = str(p.get("dbname") or "")
    if host.startswith("/"):  # a Unix socket directory
        return f"postgresql://{user}/{db}?host={host}" + (f"&port={p['port']}" if port else "")
    return f"postgresql://{user}{host}{port}/{db}"


class PostgreSQLStore:
    """The keyring's rows in a PostgreSQL database (see the module's docstring)."""

    def __init__(self, store: str) -> None:
        self._params = _params(store)
        self._params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        self._secret = str(self._params.get("password") or "")
        self._name = describe(store)
        self.position = 0
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            self._ensure_schema(self._connection())

    @property
    def describe(self) -> str:
        return self._name

    # --- connections -------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        """A new session, checked: synchronous_commit on, fsync on."""
        try:
            conn = psycopg.connect(**self._params, autocommit=True)
        except psycopg.OperationalError as e:
            raise self._connect_error(e) from None
        try:
            conn.execute("SET synchronous_commit = on")
            (sync,) = _one(conn.execute("SHOW synchronous_commit"))
            (fsync,) = _one(conn.execute("SHOW fsync"))
        except psycopg.Error as e:
            conn.close()
            raise self._unavailable(e) from None
        if sync != "on" or fsync != "on":
            conn.close()
            raise FailedPrecondition(
                f"the key store {self._name} does not commit durably (synchronous_commit="
                f"{sync}, fsync={fsync}): a change could be acknowledged and then lost; "
                "turn fsync on in the server's configuration")
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        """The store's session (made again after a failure); hold ``_lock``."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self.connect()
        return self._conn

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        return text.replace(self._secret, "***") if self._secret else text

    def _connect_error(self, e: psycopg.OperationalError) -> VaultError:
        text = self._clean(str(e))
        user = self._params.get("user") or "(libpq's default user)"
        error: VaultError
        if "authentication failed" in text or "no password supplied" in text:
            error = StoreRefused(
                f"the key store {self._name} refused user {user}: authentication failed",
                "give the right password with PGPASSWORD or a PGPASSFILE (or in the URL), "
                "or the user the server expects")
        elif "does not exist" in text and "database" in text:
            db = self._params.get("dbname") or user
            error = StoreRefused(
                f"the key store {self._name}: the database {db} does not exist",
                f"create it (createdb {db}, or CREATE DATABASE), owned by the vault's user")
        else:
            error = StoreUnavailable(f"cannot reach the key store {self._name}: {text}")
        return error

    def _unavailable(self, e: psycopg.Error) -> StoreUnavailable:
        return StoreUnavailable(
            f"the key store {self._name} is unavailable ({self._clean(str(e))[:300]}); "
            "keys already loaded keep serving")

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        try:
            with conn.transaction():
                # one process creates the tables; the others find them made
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                row = conn.execute(
                    "SELECT to_regclass('secretvault.schema_version') IS NOT NULL, "
                    "to_regclass('secretvault.keys') IS NOT NULL").fetchone()
                has_version, has_keys = row if row else (False, False)
                version = None
                if has_version:
                    got = conn.execute(
                        "SELECT version FROM secretvault.schema_version").fetchone()
                    version = None if got is None else int(got[0])
                if version is None and not has_keys:
                    conn.execute(_SCHEMA)
                    conn.execute("INSERT INTO secretvault.schema_version VALUES (1, %s) "
                                 "ON CONFLICT (id) DO NOTHING", (SCHEMA_VERSION,))
                    version = SCHEMA_VERSION
        except psycopg.Error as e:
            raise self._unavailable(e) if _is_connection(e) else StoreError(
                f"cannot create the key store's tables in {self._name}: "
                f"{self._clean(str(e))}") from None
        if version == SCHEMA_VERSION:
            return
        older = (version or 0) < SCHEMA_VERSION
        shown = "none" if version is None else str(version)
        raise StoreRefused(
            f"the key store {self._name} has schema version {shown}, "
            + ("older than" if older else "newer than") + f" this vault's {SCHEMA_VERSION}",
            "no migration from it exists: restore the database from a backup made by this "
            "version, or point --store at a new database" if older else
            "start a vault of the version that wrote it, or point --store at a new database")

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, under the lock; a lost server is :class:`StoreUnavailable`."""
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except psycopg.Error as e:
                if _is_connection(e) or conn.broken:
                    conn.close()
                    raise self._unavailable(e) from None
                raise

    @contextmanager
    def _changing(self, kind: ChangeKind, name: str,
                  version: int | None = None) -> Iterator[psycopg.Connection[Any]]:
        """One transaction numbered ``position + 1`` in the feed (:class:`StaleFeed`
        when another writer took it); the position moves once it has committed."""
        with self._session() as conn:
            with conn.transaction():
                # first: the row lock orders every writer behind this one
                row = conn.execute("UPDATE secretvault.feed SET seq = seq + 1 WHERE id = 1 "
                                   "RETURNING seq").fetchone()
                seq = int(row[0]) if row else 0
                if seq != self.position + 1:
                    raise StaleFeed(seq - 1)
                conn.execute("INSERT INTO secretvault.changes (seq, kind, name, version, at) "
                             "VALUES (%s, %s, %s, %s, %s)",
                             (seq, kind, name, version, time.time()))
                yield conn
                conn.execute(f"NOTIFY {CHANNEL}, '{seq}'")
            self.position = seq

    # --- the Store protocol ------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        with self._session() as conn:
            row = conn.execute("SELECT value FROM secretvault.meta WHERE key = %s",
                               (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def init_meta(self, items: Mapping[str, bytes]) -> None:
        with self._session() as conn, conn.transaction():
            # two replicas' first starts: the second finds the first's store
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
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
        with self._session() as conn, conn.transaction():
            # one snapshot for both reads
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
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

    def wait(self, timeout: float) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = None
            conn = self._store.connect()
            conn.execute(f"LISTEN {CHANNEL}")
            self._conn = conn
            return  # (re)connected: look now, something may have been missed
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as e:
            self._conn.close()
            raise self._store._unavailable(e) from None

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


def _is_connection(e: psycopg.Error) -> bool:
    """A lost or refused connection (rather than a statement the server refused)."""
    return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError) or (
        e.sqlstate is not None and e.sqlstate[:2] in ("08", "57"))
