"""Where sealed key versions persist: a small interface and its SQLite store.

A store never sees a plaintext key: every version arrives sealed (AEAD under
the key-encryption key, see ``sealing.py``).  Every mutating call is one
transaction, and returns only after it has committed durably — the keyring
acknowledges a key to a client only after that.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk (WAL
fsynced) before ``COMMIT`` returns, so ``kill -9`` at any point loses at most
the transaction in flight, which was never acknowledged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from clients.errors import (
    KeyExists,
    KeyNotFound,
    StoreBusy,
    StoreError,
    StoreFull,
    VersionNotFound,
)


@dataclass(frozen=True, slots=True)
class VersionRecord:
    version: int
    created: float
    public_key: bytes | None
    nonce: bytes
    sealed: bytes


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    type: str
    created: float
    primary_version: int
    min_decryption_version: int
    labels: Mapping[str, str] = field(default_factory=dict)
    versions: tuple[VersionRecord, ...] = ()


class Store(Protocol):
    """What the keyring needs from persistence."""

    def get_meta(self, key: str) -> bytes | None: ...

    def init_meta(self, items: Mapping[str, bytes]) -> None:
        """Write the store's metadata once, on first start."""
        ...

    def create_key(self, key: KeyRecord, version: VersionRecord) -> None: ...

    def add_version(self, name: str, version: VersionRecord) -> None:
        """Add a version and make it primary."""
        ...

    def set_min_decryption_version(self, name: str, version: int) -> None: ...

    def delete_version(self, name: str, version: int) -> None: ...

    def delete_key(self, name: str) -> None: ...

    def load(self) -> Iterator[KeyRecord]: ...

    def count(self) -> int: ...

    def integrity_check(self) -> list[str]:
        """Problems found (empty: sound)."""
        ...

    def close(self) -> None: ...


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
    min_decryption_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_versions (
    name       TEXT NOT NULL REFERENCES keys(name) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    created    REAL NOT NULL,
    public_key BLOB,
    nonce      BLOB NOT NULL,
    sealed     BLOB NOT NULL,
    PRIMARY KEY (name, version)
);
"""


class SQLiteStore:
    """The embedded default: one file, WAL, synchronous=FULL."""

    def __init__(self, path: str) -> None:
        self.path = path
        fresh = not os.path.exists(path)
        if fresh:
            # create it 0600 before SQLite opens it: sealed or not, it is
            # nobody else's business
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            os.close(fd)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            # deleted records are overwritten with zeros, not just unlinked
            # from the b-tree (Debian's SQLite happens to default to this;
            # others do not)
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the key store {path}: {e}") from None
        self._lock = threading.Lock()

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
                raise _store_error(e) from None

    def _scrub_wal(self) -> None:
        """Checkpoint and truncate the WAL after a deletion.

        secure_delete zeroes the record in the database pages, but the WAL
        still holds earlier images of those pages until it is checkpointed
        and truncated: only then is the sealed copy gone from disk files.
        """
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.DatabaseError as e:
                raise _store_error(e) from None

    def get_meta(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT CAST(value AS BLOB) FROM meta WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def init_meta(self, items: Mapping[str, bytes]) -> None:
        with self._tx() as db:
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", items.items())

    def create_key(self, key: KeyRecord, version: VersionRecord) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        key.name,
                        key.type,
                        key.created,
                        json.dumps(dict(key.labels), sort_keys=True),
                        version.version,
                        key.min_decryption_version,
                    ),
                )
                self._insert_version(db, key.name, version)
        except sqlite3.IntegrityError:
            raise KeyExists(f"a key named {key.name!r} already exists") from None

    @staticmethod
    def _insert_version(db: sqlite3.Connection, name: str, v: VersionRecord) -> None:
        db.execute(
            "INSERT INTO key_versions VALUES (?, ?, ?, ?, ?, ?)",
            (name, v.version, v.created, v.public_key, v.nonce, v.sealed),
        )

    def add_version(self, name: str, version: VersionRecord) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE keys SET primary_version = ? WHERE name = ?", (version.version, name)
            )
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")
            self._insert_version(db, name, version)

    def set_min_decryption_version(self, name: str, version: int) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE keys SET min_decryption_version = ? WHERE name = ?", (version, name)
            )
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")

    def delete_version(self, name: str, version: int) -> None:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM key_versions WHERE name = ? AND version = ?", (name, version)
            )
            if cur.rowcount == 0:
                raise VersionNotFound(f"key {name!r} has no version {version}")
        self._scrub_wal()

    def delete_key(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM key_versions WHERE name = ?", (name,))
            cur = db.execute("DELETE FROM keys WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise KeyNotFound(f"no key named {name!r}")
        self._scrub_wal()

    def load(self) -> Iterator[KeyRecord]:
        with self._lock:
            keys = self._db.execute(
                "SELECT name, type, created, labels, primary_version, min_decryption_version "
                "FROM keys ORDER BY name"
            ).fetchall()
            versions: dict[str, list[VersionRecord]] = {}
            # CAST: a blob rewritten as TEXT (corruption, or an edit by hand)
            # must reach the keyring as bytes that fail authentication, not
            # fail the whole load with a UTF-8 decoding error
            for name, version, created, public, nonce, sealed in self._db.execute(
                "SELECT name, version, created, CAST(public_key AS BLOB), "
                "CAST(nonce AS BLOB), CAST(sealed AS BLOB) "
                "FROM key_versions ORDER BY name, version"
            ):
                versions.setdefault(name, []).append(
                    VersionRecord(
                        version,
                        created,
                        None if public is None else bytes(public),
                        bytes(nonce),
                        bytes(sealed),
                    )
                )
        for name, type_, created, labels, primary, min_dec in keys:
            yield KeyRecord(
                name=name,
                type=type_,
                created=created,
                primary_version=primary,
                min_decryption_version=min_dec,
                labels=json.loads(labels),
                versions=tuple(versions.get(name, ())),
            )

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM key_versions").fetchone()
        return int(n)

    def integrity_check(self) -> list[str]:
        problems: list[str] = []
        with self._lock:
            (ok,) = self._db.execute("PRAGMA integrity_check").fetchone()
            if ok != "ok":
                problems.append(f"sqlite integrity_check: {ok}")
            problems += [
                f"foreign key violation in {row[0]}"
                for row in self._db.execute("PRAGMA foreign_key_check")
            ]
            problems += [
                f"key {name!r}: primary version {primary} has no record"
                for name, primary in self._db.execute(
                    "SELECT k.name, k.primary_version FROM keys k WHERE NOT EXISTS "
                    "(SELECT 1 FROM key_versions v WHERE v.name = k.name "
                    "AND v.version = k.primary_version)"
                )
            ]
        return problems

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _store_error(e: sqlite3.DatabaseError) -> StoreError | StoreFull | StoreBusy:
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return StoreFull("the key store's disk is full; nothing was written")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreBusy("the key store is locked by another process; nothing was written")
    return StoreError(f"the key store failed: {e}")
