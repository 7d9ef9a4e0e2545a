"""Following the store's change feed: every process serves what any other acknowledged.

Each vault process (a server, a worker, a program embedding the keyring)
holds its own copy of the keys in its own secret memory.  The store's feed
(:mod:`secretvault.vault.store_protocol`) numbers every change; the
:class:`Applier` reads the changes after the process's position, in order,
and for each one brings the named key to its stored state: new versions are
unsealed straight into new slots, deleted ones (and deleted keys) are zeroed
and freed, the primary and minimum decryption versions and the row MAC are
taken as stored.  Applying is by state, so applying a change twice is
harmless, but the position makes sure it happens once, and that nothing is
skipped: a process that was cut off from the store for an hour reads the
hour's changes when it is back.

The :class:`FeedFollower` is the thread that does it from
:func:`~secretvault.vault.app.open_vault` on.  A wake-up from the store
(PostgreSQL's LISTEN/NOTIFY, SQLite's ``data_version``) only says "look";
a slow poll every :data:`BACKSTOP_SECONDS` looks anyway.  While the store
cannot be reached the follower says so (:meth:`FeedFollower.statistics`,
and the listeners it was given: the server's health), retries every
:data:`RETRY_SECONDS`, and catches up as soon as it can.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from secretvault.api.errors import VaultError
from secretvault.backends import SlotAllocator
from secretvault.vault._rwlock import RWLock
from secretvault.vault.keys import Key, Version
from secretvault.vault.listing import NameIndex
from secretvault.vault.quotas import Quotas, cost
from secretvault.vault.store_protocol import Change, FeedWaiter, KeyRecord, Store
from secretvault.vault.unsealing import Unsealed, reload_key

_log = logging.getLogger("secretvault.feed")

#: changes read from the store at a time
BATCH = 500
#: the follower looks at the feed at least this often, woken or not (seconds)
BACKSTOP_SECONDS = 5.0
#: the longest one wait lasts: how long close() may wait for the thread (seconds)
STOP_SLICE_SECONDS = 0.2
#: while the store cannot be reached, the follower tries again this often (seconds)
RETRY_SECONDS = 0.5


class Applier:
    """Applies the feed's changes to one keyring; its owner holds the mutation lock."""

    def __init__(self, allocator: SlotAllocator, store: Store, unsealed: Unsealed,
                 names: NameIndex, quotas: Quotas, rw: RWLock) -> None:
        self._alloc = allocator
        self._store = store
        self._unsealed = unsealed
        self._keys = unsealed.keys
        self._names = names
        self._quotas = quotas
        self._rw = rw
        #: changes applied since start, and the last one (its commit time by its writer)
        self.applied = 0
        self.last: Change | None = None
        self.last_applied_at = 0.0

    def follow(self) -> int:
        """Apply every change after the store handle's position; how many."""
        done = 0
        while True:
            batch = self._store.changes(self._store.position, BATCH)
            if batch and batch[0].seq != self._store.position + 1:
                # pruned past this process's position (it was away longer than
                # the feed keeps): every key is brought to its stored state
                self._reload_all()
                continue
            ahead = self._store.ahead
            for change in batch:
                self._refresh(change.name)
                self._store.position = change.seq
                done += 1
                if change.seq in ahead:  # this process's own: not applied from the feed
                    ahead.discard(change.seq)
                    continue
                self.last, self.last_applied_at = change, time.time()
                # counted with the position: a batch that fails part-way keeps both
                self.applied += 1
            if len(batch) < BATCH:
                return done

    def _reload_all(self) -> None:
        head = self._store.feed_head()  # before the reads: what commits after is applied again
        _log.warning("the feed no longer holds the changes after %d: reloading every key "
                     "of %s (at change %d)", self._store.position, self._store.describe, head)
        stored = {rec.name: rec for rec in self._store.load()}
        for name in sorted(set(stored) | set(self._keys)):
            self._apply(name, stored.get(name))
        self._store.position = head
        ahead = self._store.ahead  # its own, now applied by the reload
        ahead.difference_update([seq for seq in ahead if seq <= head])

    def _refresh(self, name: str) -> None:
        """Bring key ``name`` to its stored state (gone: zeroed and forgotten)."""
        self._apply(name, self._store.load_key(name))

    def _apply(self, name: str, rec: KeyRecord | None) -> None:
        old = self._keys.get(name)
        if rec is None:
            if old is not None:
                with self._rw.write():
                    del self._keys[name]
                    self._names.remove(name)
                    self._quotas.release(old.versions.values())
                    old.free()
            return
        keep = old.versions if old is not None else {}
        key, why = reload_key(self._alloc, self._store, self._unsealed, rec, keep)
        new = [v for n, v in key.versions.items() if keep.get(n) is not v]
        gone = [v for n, v in keep.items() if key.versions.get(n) is not v]
        with self._rw.write():
            self._keys[name] = key
            if old is None:
                self._names.add(name)
            self._quotas.release(gone)
            for v in gone:
                v.free()
            if why is not None:
                self._damage(key, why)
            for v in new:
                self._quotas.charge(v.created_by, cost(v))

    def _damage(self, key: Key, why: str) -> None:
        kept: list[Version] = [v for v in key.versions.values() if v.damaged is None]
        self._quotas.release(kept)
        key.damage(why)


@dataclass(frozen=True, slots=True)
class FeedStatistics:
    """Where a process is in its store's feed, and whether it can reach the store."""

    #: the store, as messages name it
    store: str
    #: the last change of the feed this process has (its own, or applied)
    position: int
    #: changes applied from the feed since start (made by other processes)
    applied: int
    #: of the last change applied here: its commit (by its writer's clock) to its
    #: application here, in seconds (0: none applied yet)
    last_lag_seconds: float
    #: whether the follower reaches the store, and why not
    store_reachable: bool
    error: str | None


class FeedFollower:
    """The thread that keeps one keyring in step with its store's feed."""

    def __init__(self, store: Store, follow: Callable[[], int], applier: Applier,
                 *, backstop_seconds: float = BACKSTOP_SECONDS,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self._store = store
        self._follow = follow
        self._applier = applier
        self._backstop = backstop_seconds
        self._retry = retry_seconds
        self._stop = threading.Event()
        self._reachable = True
        self._error: str | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="secretvault-feed", daemon=True)

    def start(self) -> FeedFollower:
        """Start following (once: a second call does nothing)."""
        if self._thread.ident is None:
            self._thread.start()
        return self

    def on_reachability(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(reachable)`` now and whenever the store is lost or back."""
        with self._lock:
            self._listeners.append(listener)
            reachable = self._reachable
        listener(reachable)

    def _set(self, reachable: bool, error: str | None) -> None:
        with self._lock:
            changed = reachable != self._reachable
            self._reachable, self._error = reachable, error
            listeners = list(self._listeners) if changed else []
        if changed:
            if reachable:
                _log.warning("the key store %s is reachable again; the feed is caught up "
                             "at change %d", self._store.describe, self._store.position)
            else:
                _log.error("lost the key store: %s; keys already loaded keep serving, "
                           "changes fail until it is back", error)
        for listener in listeners:
            listener(reachable)

    def _run(self) -> None:
        waiter: FeedWaiter | None = None
        while not self._stop.is_set():
            try:
                if waiter is None:
                    waiter = self._store.waiter()
                    waiter.wait(0)  # armed (connected, listening) before the look
                self._follow()
                self._set(True, None)
                # in slices, so that close() is not held up by a quiet store
                deadline = time.monotonic() + self._backstop
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if waiter.wait(min(STOP_SLICE_SECONDS, self._backstop)):
                        break
            except VaultError as e:  # StoreUnavailable, or a store error
                self._set(False, str(e))
                if waiter is not None:
                    waiter.close()
                    waiter = None
                self._stop.wait(self._retry)
            except BaseException:  # a bug: say it, keep following
                _log.exception("the change feed's follower failed; retrying")
                self._stop.wait(self._retry)
        if waiter is not None:
            waiter.close()

    def statistics(self) -> FeedStatistics:
        a = self._applier
        last = a.last
        with self._lock:
            reachable, error = self._reachable, self._error
        return FeedStatistics(
            self._store.describe, self._store.position, a.applied,
            (a.last_applied_at - last.at) if last is not None else 0.0, reachable, error)

    def close(self) -> None:
        """Stop following (waits for the thread's current look or wait to end)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_SLICE_SECONDS + 5)
