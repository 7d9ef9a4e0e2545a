"""The SQLite store: the default, one file in the data directory (the interface
and the change feed: :mod:`secretvault.vault.store_protocol`).

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk (WAL
fsynced) before ``COMMIT`` returns, so ``kill -9`` at any point loses at most
the transaction in flight, which was never acknowledged.  ``BEGIN IMMEDIATE``
serialises writers, processes included, so the feed's counter row needs no
more; a follower's wake-up is ``PRAGMA data_version``, which changes on a
connection when another connection (in any process) commits to the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from secretvault.api.errors import (
    KeyExists,
    KeyNotFound,
    VersionNotFound,
)
from secretvault.vault.records import (
    KeyRecord,
    VersionRecord,
    is_number,
    is_version,
    parse_key_row,
)
from secretvault.vault.sqlite_errors import store_error
from secretvault.vault.store_protocol import (
    FEED_RETAIN,
    PRUNE_EVERY,
    Change,
    ChangeKind,
    StaleFeed,
    Store,
)
from secretvault.vault.store_wake import DataVersionWaiter
from secretvault.vault.store_wal import scrub_wal

__all__ = ["KeyRecord", "SQLiteStore", "Store", "VersionRecord"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    name                   TEXT PRIMARY KEY,
    type                   TEXT NOT NULL,
    created                REAL NOT NULL,
    labels                 TEXT NOT NULL,
    primary_version        INTEGER NOT NULL,
    min_decryption_version INTEGER NOT NULL,
    row_mac                BLOB
);
CREATE TABLE IF NOT EXISTS key_versions (
    name       TEXT NOT NULL REFERENCES keys(name) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    created    REAL NOT NULL,
    public_key BLOB,
    nonce      BLOB NOT NULL,
    sealed     BLOB NOT NULL,
    created_by TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS feed (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO feed (id, seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS changes (
    seq     INTEGER PRIMARY KEY,
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    version INTEGER,
    at      REAL NOT NULL
);
"""


class SQLiteStore:
    """The embedded default: one file, WAL, synchronous=FULL."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.position = 0
        self.ahead: set[int] = set()
        self.feed_retain = FEED_RETAIN
        if not os.path.exists(path):
            # create it 0600 before SQLite opens it: sealed or not, it is nobody else's
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            os.close(fd)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            # deleted records are overwritten with zeros, not just unlinked from
            # the b-tree (Debian's SQLite happens to default to this; others do not)
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)
            # a store from before row MACs has no row_mac column: migrate_row_macs adds
            # it once the keyring has unsealed it (a wrong passphrase changes nothing)
            self._has_row_mac = "row_mac" in {
                row[1] for row in self._db.execute("PRAGMA table_info(keys)")}
            # likewise created_by: the first version written after the unseal adds it
            self._has_created_by = "created_by" in {
                row[1] for row in self._db.execute("PRAGMA table_info(key_versions)")}
        except sqlite3.DatabaseError as e:
            raise store_error(e, f"cannot open the key store {path}") from None
        self._lock = threading.Lock()
        #: keys whose stored name does not round-trip (NULL, not UTF-8, not text), by
        #: the name they are served under: (rowid, the stored bytes)
        self._by_row: dict[str, tuple[int, bytes | None]] = {}

    @property
    def describe(self) -> str:
        return self.path

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads: a damaged file is a typed error, not a traceback."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as e:
                raise store_error(e, f"cannot read the key store {self.path}") from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction, committed durably, or rolled back and mapped to a
        typed error (constraint violations propagate for the caller to name)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise
            except sqlite3.DatabaseError as e:
                raise store_error(e) from None

    @contextmanager
    def _changing(self, kind: ChangeKind, name: str,
                  version: int | None = None) -> Iterator[sqlite3.Connection]:
        """:meth:`_tx`, numbered next in the feed; :class:`StaleFeed` when a change
        this process has not applied touched ``name`` (``store_protocol``)."""
        with self._tx() as db:
            (head,) = db.execute("SELECT seq FROM feed WHERE id = 1").fetchone()
            if head != self.position:
                n, mine = db.execute("SELECT count(*), coalesce(sum(name = ?), 0) FROM changes "
                                     "WHERE seq > ?", (name, self.position)).fetchone()
                if mine or n != head - self.position:
                    raise StaleFeed(int(head))
            seq = head + 1
            db.execute("UPDATE feed SET seq = ? WHERE id = 1", (seq,))
            db.execute("INSERT INTO changes (seq, kind, name, version, at) "
                       "VALUES (?, ?, ?, ?, ?)", (seq, kind, name, version, time.time()))
            if seq % min(PRUNE_EVERY, self.feed_retain) == 0:
                db.execute("DELETE FROM changes WHERE seq <= ?", (seq - self.feed_retain,))
            yield db
        if seq == self.position + 1:
            self.position = seq
        else:
            self.ahead.add(seq)

    def get_meta(self, key: str) -> bytes | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT CAST(value AS BLOB) FROM meta WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def init_meta(self, items: Mapping[str, bytes]) -> None:
        with self._tx() as db:
            if not self._has_row_mac:  # an empty file left by an old version
                db.execute("ALTER TABLE keys ADD COLUMN row_mac BLOB")
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", items.items())
        self._has_row_mac = True

    def create_key(self, key: KeyRecord, version: VersionRecord, *,
                   kind: ChangeKind = "create") -> None:
        try:
            with self._changing(kind, key.name, version.version) as db:
                db.execute(
                    "INSERT INTO keys (name, type, created, labels, primary_version, "
                    "min_decryption_version, row_mac) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        key.name,
                        key.type,
                        key.created,
                        json.dumps(dict(key.labels), sort_keys=True),
                        version.version,
                        key.min_decryption_version,
                        key.row_mac,
                    ),
                )
                self._insert_version(db, key.name, version)
        except sqlite3.IntegrityError:
            raise KeyExists(f"a key named {key.name!r} already exists") from None
        self._has_created_by = True  # committed: the column is there from now on

    def _insert_version(self, db: sqlite3.Connection, name: str, v: VersionRecord) -> None:
        if not self._has_created_by:
            db.execute("ALTER TABLE key_versions ADD COLUMN created_by TEXT")
        db.execute(
            "INSERT INTO key_versions (name, version, created, public_key, nonce, sealed, "
            "created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, v.version, v.created, v.public_key, v.nonce, v.sealed, v.created_by),
        )

    def add_version(self, name: str, version: VersionRecord, *, row_mac: bytes) -> None:
        with self._changing("rotate", name, version.version) as db:
            cur = db.execute(
                "UPDATE keys SET primary_version = ?, row_mac = ? WHERE name = ?",
                (version.version, row_mac, name),
            )
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")
            self._insert_version(db, name, version)
        self._has_created_by = True

    def set_min_decryption_version(self, name: str, version: int, *, row_mac: bytes) -> None:
        with self._changing("min_decryption_version", name, version) as db:
            cur = db.execute(
                "UPDATE keys SET min_decryption_version = ?, row_mac = ? WHERE name = ?",
                (version, row_mac, name),
            )
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")

    def delete_version(self, name: str, version: int, *, row_mac: bytes) -> None:
        with self._changing("delete_version", name, version) as db:
            cur = db.execute(
                "DELETE FROM key_versions WHERE name = ? AND version = ?", (name, version)
            )
            if cur.rowcount == 0:
                raise VersionNotFound(f"key {name!r} has no version {version}")
            db.execute("UPDATE keys SET row_mac = ? WHERE name = ?", (row_mac, name))
        scrub_wal(self._db, self._lock, self.path)

    def migrate_row_macs(self, macs: Mapping[str, bytes], meta: Mapping[str, bytes]) -> None:
        with self._tx() as db:
            if not self._has_row_mac:
                db.execute("ALTER TABLE keys ADD COLUMN row_mac BLOB")
            db.executemany("UPDATE keys SET row_mac = ? WHERE name = ? AND row_mac IS NULL",
                           [(mac, name) for name, mac in macs.items()])
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           meta.items())
        self._has_row_mac = True

    def delete_key(self, name: str) -> None:
        row = self._by_row.get(name)
        with self._changing("delete_key", name) as db:
            if row is None:
                db.execute("DELETE FROM key_versions WHERE name = ?", (name,))
                cur = db.execute("DELETE FROM keys WHERE name = ?", (name,))
            else:  # a damaged name: by its row, and its versions by the stored bytes
                db.execute("DELETE FROM key_versions WHERE CAST(name AS BLOB) = ?", (row[1],))
                cur = db.execute("DELETE FROM keys WHERE rowid = ?", (row[0],))
                # a damaged name no longer matches its versions' (they keep the
                # name it had): those no key row names are that key's, and no
                # load could place them, so they go with it, sealed copies and all
                db.execute("DELETE FROM key_versions WHERE CAST(name AS BLOB) NOT IN "
                           "(SELECT CAST(name AS BLOB) FROM keys WHERE name IS NOT NULL)")
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")
        self._by_row.pop(name, None)
        scrub_wal(self._db, self._lock, self.path)

    def load(self) -> Iterator[KeyRecord]:
        with self._reading() as db:
            keys, versions, bad_numbers = _read_keys(db, self._has_row_mac,
                                                     self._has_created_by, None)
        self._by_row = {}
        for rowid, kind, *row in keys:
            # (a TEXT PRIMARY KEY may hold NULL in SQLite: named by its rowid)
            raw = row[0] if isinstance(row[0], bytes) else None
            rec = parse_key_row(row, tuple(versions.get(raw, ())) if raw is not None else (),
                             bad_numbers.get(raw, []) if raw is not None else [], rowid)
            if kind != "text" or rec.name.encode() != raw:
                self._by_row[rec.name] = (rowid, raw)
            yield rec

    def load_key(self, name: str) -> KeyRecord | None:
        with self._reading() as db:
            keys, versions, bad_numbers = _read_keys(db, self._has_row_mac,
                                                     self._has_created_by, name)
        for rowid, kind, *row in keys:
            raw = row[0]
            if kind == "text" and isinstance(raw, bytes) and raw == name.encode():
                return parse_key_row(row, tuple(versions.get(raw, ())),
                                     bad_numbers.get(raw, []), rowid)
        return None

    def feed_head(self) -> int:
        with self._reading() as db:
            (head,) = db.execute("SELECT seq FROM feed WHERE id = 1").fetchone()
        return int(head)

    def changes(self, after: int, limit: int) -> list[Change]:
        with self._reading() as db:
            rows = db.execute("SELECT seq, kind, name, version, at FROM changes WHERE seq > ? "
                              "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [Change(int(seq), str(kind), str(name), version, float(at))
                for seq, kind, name, version, at in rows]

    def waiter(self) -> DataVersionWaiter:
        return DataVersionWaiter(self.path)

    def count(self) -> int:
        with self._reading() as db:
            (n,) = db.execute("SELECT count(*) FROM key_versions").fetchone()
        return int(n)

    def integrity_check(self) -> list[str]:
        problems: list[str] = []
        with self._reading() as db:
            (ok,) = db.execute("PRAGMA integrity_check").fetchone()
            if ok != "ok":
                problems.append(f"sqlite integrity_check: {ok}")
            problems += [
                f"foreign key violation in {row[0]}"
                for row in db.execute("PRAGMA foreign_key_check")
            ]
            problems += [
                f"key {name!r}: primary version {primary} has no record"
                for name, primary in db.execute(
                    "SELECT k.name, k.primary_version FROM keys k WHERE NOT EXISTS "
                    "(SELECT 1 FROM key_versions v WHERE v.name = k.name "
                    "AND v.version = k.primary_version)"
                )
            ]
        return problems

    def close(self) -> None:
        with self._lock:
            self._db.close()


_Rows = tuple[list[Any], dict[bytes, list[VersionRecord]], dict[bytes, list[str]]]


def _read_keys(db: sqlite3.Connection, has_row_mac: bool, has_created_by: bool,
               name: str | None) -> _Rows:
    """The key rows (every one, or the one named ``name``) and their versions."""
    # CAST: a blob rewritten as TEXT, or text that is not UTF-8 (corruption,
    # or an edit by hand), must reach the parsers as bytes, not fail the whole
    # load with a decoding error in fetchall(); SQLite's column affinity does
    # not stop a value of another type from being stored, so every value is
    # checked
    # one read transaction, one snapshot (WAL): a change committed between the
    # two reads must not pair a key row with versions its row MAC does not cover
    db.execute("BEGIN")
    try:
        return _read_rows(db, has_row_mac, has_created_by, name)
    finally:
        db.execute("COMMIT")


def _read_rows(db: sqlite3.Connection, has_row_mac: bool, has_created_by: bool,
               name: str | None) -> _Rows:
    where, params = ("WHERE name = ? ", (name,)) if name is not None else ("", ())
    keys = db.execute(
        "SELECT rowid, typeof(name), CAST(name AS BLOB), CAST(type AS BLOB), created, "
        "CAST(labels AS BLOB), primary_version, min_decryption_version, "
        + ("CAST(row_mac AS BLOB) " if has_row_mac else "NULL ")
        + "FROM keys " + where + "ORDER BY name", params).fetchall()
    versions: dict[bytes, list[VersionRecord]] = {}
    bad_numbers: dict[bytes, list[str]] = {}
    for raw_name, version, created, public, nonce, sealed, by in db.execute(
        "SELECT CAST(name AS BLOB), version, created, CAST(public_key AS BLOB), "
        "CAST(nonce AS BLOB), CAST(sealed AS BLOB), "
        + ("created_by " if has_created_by else "NULL ")
        + "FROM key_versions " + where + "ORDER BY name, version", params
    ):
        key = bytes(raw_name)
        if not is_version(version):
            # without its number the record cannot be placed: the key as a
            # whole is reported damaged
            bad_numbers.setdefault(key, []).append(
                f"a version record's number {version!r} is not a version number")
            continue
        damaged = None if is_number(created) else (
            f"its created time {created!r} is not a number")
        versions.setdefault(key, []).append(VersionRecord(
            version, float(created) if is_number(created) else 0.0,
            None if public is None else bytes(public), bytes(nonce), bytes(sealed),
            damaged, by if isinstance(by, str) else None))
    return keys, versions, bad_numbers
