"""What the keyring needs from persistence: the :class:`Store` protocol and its change feed.

A store never sees a plaintext key: every version arrives sealed (AEAD under
the key-encryption key, see ``sealing.py``).  Every mutating call is one
transaction, and returns only after it has committed durably — the keyring
acknowledges a key to a client only after that.

**The change feed.**  Every mutating call also appends one :class:`Change`
to the store's feed, in the same transaction, numbered by a single counter
row that the transaction updates: writers serialise on that row, so change
``N + 1`` can only commit after ``N`` has, and a reader never sees a gap.
A store handle remembers :attr:`Store.position`: every change up to it has
been applied to the process's keyring.  A mutation of key ``K`` takes the
next number; when changes this process has not applied came in between
(another process's), it is refused with :class:`StaleFeed`, changing
nothing, if any of them touched ``K`` (or the feed no longer holds them
all): the keyring then applies them, so its new row MAC and version number
are computed over the key's real state, and tries again.  Changes to other
keys do not refuse it (a busy writer elsewhere cannot starve it); the
position then stays where it was, and the follower applies the changes in
between, and this one again, harmlessly (applying is by state).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from secretvault.vault.records import KeyRecord, VersionRecord

__all__ = ["AlreadyInitialised", "Change", "ChangeKind", "FeedWaiter", "KeyRecord",
           "StaleFeed", "Store", "VersionRecord"]

#: changes the feed keeps: older ones are deleted every :data:`PRUNE_EVERY` changes (a
#: process further behind than this reloads every key instead: ``feed.Applier``)
FEED_RETAIN = 100_000
PRUNE_EVERY = 1_000

ChangeKind = Literal["create", "import", "rotate", "min_decryption_version",
                     "delete_version", "delete_key"]


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the feed: what changed (never any key material)."""

    seq: int
    kind: str
    name: str
    version: int | None
    #: when it committed, by the writer's clock (seconds since the epoch)
    at: float


class StaleFeed(Exception):
    """Another process changed the store since this one's :attr:`Store.position`.

    Nothing was written.  Never leaves the keyring: it catches up and retries.
    """

    def __init__(self, head: int) -> None:
        super().__init__(f"the feed is at {head}")
        self.head = head


class AlreadyInitialised(Exception):
    """:meth:`Store.init_meta` found the metadata written by another process's
    first start, in the meantime: nothing was written; open the store as it is."""


class FeedWaiter(Protocol):
    """A wake-up: returns True when the store may have changed, False after ``timeout``.

    It only says "look": what changed, and whether anything did, is read from
    the feed by sequence number.  Raises ``StoreUnavailable`` when the store
    cannot be reached (the next call tries to reconnect).
    """

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class Store(Protocol):
    """What the keyring needs from persistence."""

    #: the last change of the feed this process has applied (set by the
    #: keyring's follower; a mutation advances it)
    position: int
    #: this handle's own changes past :attr:`position` (made while another
    #: process's change, to another key, came first): the follower reads them
    #: again, and does not count them as applied from the feed
    ahead: set[int]
    #: how many changes the feed keeps (:data:`FEED_RETAIN`)
    feed_retain: int

    @property
    def describe(self) -> str:
        """The store as messages name it (a path, or a URL without its password)."""
        ...

    def get_meta(self, key: str) -> bytes | None: ...

    def init_meta(self, items: Mapping[str, bytes]) -> None:
        """Write the store's metadata once, on first start."""
        ...

    # Every call that changes a key writes the key's new row MAC (computed by
    # the keyring over the state after the change) in the same transaction:
    # a crash leaves the old row and its old MAC, or the new and the new.
    # Each also appends its change to the feed (see the module's docstring).

    def create_key(self, key: KeyRecord, version: VersionRecord, *,
                   kind: ChangeKind = "create") -> None:
        """Insert the key row (with ``key.row_mac``) and its first version."""
        ...

    def add_version(self, name: str, version: VersionRecord, *, row_mac: bytes) -> None:
        """Add a version and make it primary."""
        ...

    def set_min_decryption_version(self, name: str, version: int, *, row_mac: bytes) -> None: ...

    def delete_version(self, name: str, version: int, *, row_mac: bytes) -> None: ...

    def migrate_row_macs(self, macs: Mapping[str, bytes], meta: Mapping[str, bytes]) -> None:
        """One transaction: set the row MAC of each named key that has none,
        and write ``meta`` (insert or replace)."""
        ...

    def delete_key(self, name: str) -> None:
        """Delete the key and its versions; a key loaded under a name its row
        does not hold (NULL, not UTF-8, a blob) is deleted by its row."""
        ...

    def load(self) -> Iterator[KeyRecord]:
        """Every key with its versions, by name.

        A row that does not parse (corruption, an edit by hand) must not stop
        the load: it comes back with ``damaged`` saying what is wrong, so the
        keyring serves every other key.
        """
        ...

    def load_key(self, name: str) -> KeyRecord | None:
        """One key as it is now (None: no such key), parsed as :meth:`load` does."""
        ...

    def feed_head(self) -> int:
        """The number of the last committed change (0: none yet)."""
        ...

    def changes(self, after: int, limit: int) -> list[Change]:
        """Up to ``limit`` changes numbered above ``after``, in order (the first is
        above ``after + 1`` when the feed has been pruned past it)."""
        ...

    def waiter(self) -> FeedWaiter:
        """A new wake-up for the feed's follower (its own connection)."""
        ...

    def count(self) -> int: ...

    def integrity_check(self) -> list[str]:
        """Problems found (empty: sound)."""
        ...

    def close(self) -> None: ...

