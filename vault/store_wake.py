"""The SQLite follower's wake-up: ``PRAGMA data_version``, read every few ms.

A connection's ``data_version`` changes when another connection, in any
process, commits to the file; :class:`DataVersionWaiter` keeps a connection of
its own for that and says only "look": the feed's numbers
(:mod:`secretvault.vault.store_protocol`) say what changed.
"""

from __future__ import annotations

import sqlite3
import time

from secretvault.vault.sqlite_errors import store_error

__all__ = ["POLL_SECONDS", "DataVersionWaiter"]

#: how often a follower's wake-up reads ``PRAGMA data_version`` (seconds)
POLL_SECONDS = 0.01


class DataVersionWaiter:
    """The SQLite wake-up: ``PRAGMA data_version`` on its own connection (it moves
    when any other connection commits), read every :data:`POLL_SECONDS`."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._seen = self._version()

    def _version(self) -> int:
        (v,) = self._db.execute("PRAGMA data_version").fetchone()
        return int(v)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = self._version()
            except sqlite3.DatabaseError as e:
                raise store_error(e, "cannot read the key store's feed") from None
            if v != self._seen:
                self._seen = v
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_SECONDS, left))

    def close(self) -> None:
        self._db.close()
