"""Erasing deleted records from the SQLite store's write-ahead log.

``secure_delete`` zeroes a deleted record in the database pages, but the WAL
still holds earlier images of those pages until it is checkpointed and
truncated: only then is the sealed copy gone from the disk files.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

_log = logging.getLogger("secretvault.store")


def scrub_wal(db: sqlite3.Connection, lock: threading.Lock, path: str) -> None:
    """Checkpoint and truncate the WAL of ``db`` (the store at ``path``) after a deletion.

    It runs after the deletion has committed, so it never fails the call
    (the caller must update its memory to match the disk): a checkpoint
    that fails or is blocked by another reader is logged, and the next
    deletion's checkpoint, or closing the store, finishes the job.
    """
    with lock:
        try:
            busy, log_frames, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.DatabaseError as e:
            _log.error("deletion committed, but the WAL of %s could not be checkpointed "
                       "(%s): earlier copies of the record stay in %s-wal until the next "
                       "checkpoint", path, e, path)
            return
    if busy or log_frames != done:
        _log.warning("deletion committed, but another reader of %s blocked the WAL "
                     "checkpoint: earlier copies of the record stay in %s-wal until the "
                     "next checkpoint", path, path)
