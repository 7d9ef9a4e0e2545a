"""One process per store: the lock a vault holds on its store while it is open.

Every process that opens a store (the server, or a program embedding the
keyring) unseals each key into its own secret memory and serves from that
copy.  Two processes over one store would each serve their own copy, and a
key one of them created, rotated or deleted would stay unknown, stale or
alive in the other: nothing corrupts the file, but the keyrings drift apart
silently.  Until processes follow a change feed, a store is therefore open
in one process at a time, and a second one is refused with the holder's pid
and what it is.

The lock is ``flock(2)`` on a file beside the store (``keys.sqlite3.lock``),
not on the database itself: SQLite takes POSIX record locks on its files,
which any ``close`` of the file in the process drops, while a ``flock`` lives
with its open file description and goes away only with it, or with the
process (``kill -9`` included).  The file holds one line, ``PID WHAT``, so a
refusal can say who holds the store; the line is only a hint, the lock is
the truth.
"""

from __future__ import annotations

import fcntl
import os

from secretvault.api.errors import StoreInUse

LOCK_SUFFIX = ".lock"
_HOLDER_MAX = 512


class StoreLock:
    """A hold on ``store_path`` for this process, until :meth:`release`.

    Exclusive by default.  ``shared=True`` is for the workers of one
    ``serve --workers N``: they hold it together (``LOCK_SH``), and an
    exclusive opener (a plain server, an embedded keyring) is refused while
    any of them does, as they are refused while it holds the store.
    """

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
                f"the key store {store_path} is open in another process ({other}), and a "
                "store is open in one process at a time (or in the workers of one "
                "'serve --workers')") from None
        except BaseException:
            os.close(fd)
            raise
        line = f"{os.getpid()} {holder}\n".encode()[:_HOLDER_MAX]
        # shared holders each write theirs: the last one is named (a hint)
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)
        self._fd: int | None = fd

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
