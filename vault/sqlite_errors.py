"""What a failed SQLite call means, as the vault's errors: one mapping for the
store (:mod:`secretvault.vault.store`) and its follower's wake-up
(:mod:`secretvault.vault.store_wake`)."""

from __future__ import annotations

import sqlite3

from secretvault.api.errors import (
    StoreBusy,
    StoreDamaged,
    StoreError,
    StoreFull,
    VaultError,
)

__all__ = ["store_error"]


def store_error(e: sqlite3.DatabaseError, what: str = "the key store failed") -> VaultError:
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return StoreFull("the key store's disk is full; nothing was written")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreBusy("the key store is locked by another process; nothing was written")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreDamaged(f"{what}: the file is damaged ({e})")
    return StoreError(f"{what}: {e}")
