"""The lock a vault process holds on its store while it is open: shared to serve,
exclusive for what needs sole access.

Every process that opens a store (the server, its workers, a program
embedding the keyring) unseals each key into its own secret memory and
serves from that copy, and follows the store's change feed
(:mod:`secretvault.vault.feed`) so that a key one of them creates, rotates or
deletes reaches every other.  Serving processes therefore share the store:
each holds the lock **shared**.  The lock is **exclusive** only where one
process must be alone: a first start (creating the unseal key file and the
store's metadata) and a migration of the store's format.  An exclusive
opener is refused while anyone serves, and a serving opener is refused while
someone holds it exclusively, each with the holder's pid and what it is.

The lock is ``flock(2)`` on a file beside the store (``keys.sqlite3.lock``),
not on the database itself: SQLite takes POSIX record locks on its files,
which any ``close`` of the file in the process drops, while a ``flock`` lives
with its open file description and goes away only with it, or with the
process (``kill -9`` included).  The file holds one line, ``PID WHAT``,
written by the last exclusive holder, so a refusal can say who holds the
store; the line is only a hint, the lock is the truth.
"""

from __future__ import annotations

import fcntl
import os

from secretvault.api.errors import StoreInUse

LOCK_SUFFIX = ".lock"
_HOLDER_MAX = 512


class StoreLock:
    """A hold on ``store_path`` for this process, until :meth:`release`:
    ``shared`` to serve beside other processes, else exclusive (sole access)."""

    def __init__(self, store_path: str, holder: str, *, shared: bool = False) -> None:
        self.path = store_path + LOCK_SUFFIX
        self.shared = shared
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_holder(fd)
            os.close(fd)
            raise StoreInUse(
                f"the key store {store_path} is held by another process ({other}), "
                + ("which needs it alone (a first start or a migration)" if shared else
                   "and this one needs it alone (a first start or a migration): stop the "
                   "other vault processes using it first")) from None
        except BaseException:
            os.close(fd)
            raise
        if not shared:
            line = f"{os.getpid()} {holder}\n".encode()[:_HOLDER_MAX]
            os.ftruncate(fd, 0)
            os.pwrite(fd, line, 0)
        self._fd: int | None = fd

    def share(self) -> None:
        """Turn an exclusive hold into a shared one: other serving processes may
        open the store from now on (the sole-access work is done)."""
        if self._fd is not None and not self.shared:
            # an exclusive flock converts to shared without a moment unheld
            # from this process's side (other waiters may get theirs at once)
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            self.shared = True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let another process open the store (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            # the line is left behind on purpose: truncating it before the
            # unlock would race a new holder writing its own
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, _HOLDER_MAX, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    pid, _, what = text.partition(" ")
    if not pid.isdigit():
        return "a process that has not said which"
    return f"pid {pid}: {what}" if what else f"pid {pid}"
