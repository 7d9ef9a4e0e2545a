"""The keyring's changes: create, import, rotate, minimum decryption version, delete.

:class:`KeyChanges` is the half of :class:`~secretvault.vault.keyring.Keyring`
that changes keys (the keyring mixes it in; the lookups and the operations
are in ``keyring.py``).  Life of a key version: generated (or opened from a
wrapped import) straight into a slot; sealed under the KEK; committed to the
store; only then published and acknowledged.  Deletion removes the sealed
record first, then zeroes the slot.

Every change runs under the mutation lock (so a name is created once and
versions are numbered without gaps in this process), on the store's latest
state (the feed's new changes are applied first), and is numbered in the
store's change feed.  When another process changed the store in between, the
store refuses it (:class:`~secretvault.vault.store_protocol.StaleFeed`,
nothing written): the keyring applies the feed's new changes and runs the
change again on the state they made, so two processes creating one name
get exactly one key (the other KeyExists), and concurrent rotations get
distinct, ordered versions.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TypeVar

from secretvault.api.errors import (
    FailedPrecondition,
    ImportKeyUnavailable,
    IntegrityError,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    StoreBusy,
    StoreSealed,
    VersionNotFound,
)
from secretvault.backends import Slot, SlotAllocator
from secretvault.vault import crypto
from secretvault.vault._rwlock import RWLock
from secretvault.vault.crypto import KeyType
from secretvault.vault.feed import Applier
from secretvault.vault.keys import Key, KeyInfo, Version, validate_labels, validate_name
from secretvault.vault.listing import NameIndex
from secretvault.vault.quotas import Quotas
from secretvault.vault.store_protocol import ChangeKind, KeyRecord, StaleFeed, Store, VersionRecord
from secretvault.vault.unsealing import ImportKey, Unsealed

T = TypeVar("T")
#: how often a change is tried again when other processes keep changing the store first
STALE_RETRIES = 20
#: after the n-th stale refusal a change waits up to STALE_PAUSE * 2**n seconds
#: (full jitter), never more than STALE_PAUSE_CAP: about 0.5 s over every retry
STALE_PAUSE, STALE_PAUSE_CAP = 0.001, 0.05
_pause = time.sleep
#: makes a new version's key: (its slot, filled; public key; length in the slot)
Fill = Callable[[], tuple[Slot, bytes | None, int]]


class KeyChanges:
    """Every change to the keyring's keys (mixed into ``Keyring``, which sets these)."""

    _alloc: SlotAllocator
    _store: Store
    _unsealed: Unsealed
    _keys: dict[str, Key]
    _import: ImportKey
    _names: NameIndex
    quotas: Quotas
    _mutate: threading.Lock
    _rw: RWLock
    _applier: Applier
    _closed: bool

    def _get(self, name: str) -> Key:
        key = self._keys.get(name)
        if key is None:
            validate_name(name)
            raise KeyNotFound(f"no key named {name!r}")
        return key

    def _import_unavailable(self) -> ImportKeyUnavailable:
        return ImportKeyUnavailable(
            f"wrapped import is unavailable: {self._import.damaged}. Every other operation "
            "works; restore the store from a backup to import keys again")

    def _require_open(self) -> None:
        """Mutations after close would reach a freed KEK slot: refuse them."""
        if self._closed:
            raise StoreSealed("the keyring is closed")

    def _existing(self, name: str, *, intact: bool = True) -> Key:
        """The key ``name``, to change; call it in :meth:`_retrying`.

        Unless ``intact`` is False, refused when the key is damaged: a key
        whose stored row does not parse or fails its MAC may be deleted, not
        changed (a new version would be sealed under a type read from that
        row, and a new MAC over it would vouch for whatever was changed).
        """
        key = self._get(name)
        if intact and key.damaged is not None:
            raise IntegrityError(
                f"key {key.name!r}: {key.damaged}; delete it, or restore the store from "
                "a backup")
        return key

    def _retrying(self, change: Callable[[], T]) -> T:
        """Run ``change`` under the mutation lock, refused once closed, on the store's
        latest state: the feed's new changes are applied first (a refusal such as
        KeyNotFound must not come from a stale copy).  When another process still
        changed the store in between (:class:`StaleFeed`: nothing was written), its
        changes are applied and ``change`` runs again."""
        with self._mutate:
            self._require_open()
            for attempt in range(STALE_RETRIES):
                self._applier.follow()
                try:
                    return change()
                except StaleFeed:
                    # a writer that lost the race waits a random while before it
                    # tries again, so one that always wins cannot starve it
                    cap = min(STALE_PAUSE_CAP, STALE_PAUSE * 2 ** attempt)
                    _pause(random.uniform(0, cap))  # noqa: S311 (timing jitter, not a secret)
            raise StoreBusy(f"the key store changed under this change {STALE_RETRIES} "
                            "times in a row (other processes are changing it): retry")

    def follow(self) -> int:
        """Apply every change of the store's feed this process has not seen; how many."""
        with self._mutate:
            return 0 if self._closed else self._applier.follow()

    @contextmanager
    def _new_version(self, key: Key | None, kt: KeyType, name: str, n: int, size: int,
                     fill: Fill, by: str | None) -> Iterator[tuple[Version, VersionRecord]]:
        """Version ``n`` of ``name`` (``key``; None: new), made by ``by``,
        filled and sealed, for the body to commit to the store; if the body
        raises, its slot is zeroed and freed, else ``by`` is charged for it."""
        charge = self.quotas.admit(key, by, size)
        slot, public, length = fill()
        try:
            rec = replace(self._unsealed.seal(kt, name, n, slot, length, public), created_by=by)
            yield Version.of(rec, slot, length), rec
        except BaseException:
            slot.free()
            raise
        self.quotas.charge(by, charge)

    def create(
        self, name: str, key_type: KeyType | str, labels: Mapping[str, str] | None = None,
        *, by: str | None = None,
    ) -> KeyInfo:
        """A new key with a fresh version 1, made by identity ``by`` (None: no
        identity, charged to nobody).  Returns once it is durable."""
        kt = KeyType.parse(key_type) if isinstance(key_type, str) else key_type
        return self._add_key(validate_name(name), kt, validate_labels(labels or {}),
                             crypto.SLOT_BYTES[kt], lambda: self._generate(kt), by, "create")

    def _generate(self, kt: KeyType) -> tuple[Slot, bytes | None, int]:
        length = crypto.SLOT_BYTES[kt]
        slot = self._alloc.allocate(length)
        try:
            return slot, crypto.generate(kt, slot), length
        except BaseException:
            slot.free()
            raise

    def import_wrapped(
        self, name: str, key_type: KeyType | str, wrapped: bytes,
        labels: Mapping[str, str] | None = None, *, by: str | None = None,
    ) -> KeyInfo:
        """A new key whose version 1 is opened from a sealed box, into a slot.

        ``wrapped`` is ``crypto_box_seal(material, import_public_key)``: the
        material never exists outside the client and the vault's slot.
        """
        kt = KeyType.parse(key_type) if isinstance(key_type, str) else key_type
        validate_name(name)
        labels = validate_labels(labels or {})
        if self._import.damaged is not None:
            raise self._import_unavailable()
        size, fill = self._import.opener(self._alloc, kt, wrapped)
        return self._add_key(name, kt, labels, size, fill, by, "import")

    def adopt(self, name: str, seeded: Slot, public: bytes, labels: Mapping[str, str], *,
              by: str | None = None) -> KeyInfo:
        """A new Ed25519 key whose version 1 comes from the seed at the start of
        ``seeded`` (filled, e.g., by the SSH agent from its socket); it must
        give ``public``.  Each attempt expands the seed into a slot of the
        keyring's own (a retry after another process's change frees the
        attempt's slot), so ``seeded`` stays the caller's to free."""
        kt = KeyType.ED25519

        def fill() -> tuple[Slot, bytes | None, int]:
            slot = self._alloc.allocate(crypto.SLOT_BYTES[kt])
            try:
                if crypto.expand_import(kt, seeded, crypto.IMPORT_BYTES[kt][0], slot) != public:
                    raise InvalidArgument("the private key does not match its public key")
                return slot, public, crypto.SLOT_BYTES[kt]
            except BaseException:
                slot.free()
                raise

        return self._add_key(validate_name(name), kt, validate_labels(labels),
                             crypto.SLOT_BYTES[kt], fill, by, "import")

    def _add_key(self, name: str, kt: KeyType, labels: dict[str, str], size: int, fill: Fill,
                 by: str | None, kind: ChangeKind) -> KeyInfo:
        def add() -> KeyInfo:
            if name in self._keys:
                raise KeyExists(f"a key named {name!r} already exists")
            with self._new_version(None, kt, name, 1, size, fill, by) as (v, rec):
                key = Key(name, kt, rec.created, 1, 1, labels, {1: v})
                row = KeyRecord(name, kt.value, key.created, 1, 1, labels,
                                row_mac=self._unsealed.row_mac(key))
                self._store.create_key(row, rec, kind=kind)
            with self._rw.write():
                self._keys[name] = key
                self._names.add(name)
            return key.info()

        return self._retrying(add)

    def rotate(self, name: str, *, by: str | None = None) -> KeyInfo:
        """A new primary version, made by ``by``; older ones stay for decrypt and verify."""
        return self._retrying(lambda: self._rotate(name, by))

    def _rotate(self, name: str, by: str | None) -> KeyInfo:
        key = self._existing(name)
        n = max(key.versions, default=0) + 1
        kt = key.type
        with self._new_version(key, kt, name, n, crypto.SLOT_BYTES[kt],
                               lambda: self._generate(kt), by) as (v, rec):
            mac = self._unsealed.row_mac(key, primary=n,
                                         digests=[*key.digests(), (n, v.digest)])
            self._store.add_version(name, rec, row_mac=mac)
        with self._rw.write():
            key.versions[n] = v
            key.primary = n
        return key.info()

    def set_min_decryption_version(self, name: str, version: int) -> KeyInfo:
        return self._retrying(lambda: self._set_min(name, version))

    def _set_min(self, name: str, version: int) -> KeyInfo:
        key = self._existing(name)
        if not 1 <= version <= key.primary:
            raise InvalidArgument(
                f"the minimum decryption version of {name!r} must be between 1 and its "
                f"primary version {key.primary}; got {version}"
            )
        mac = self._unsealed.row_mac(key, min_decryption=version)
        self._store.set_min_decryption_version(name, version, row_mac=mac)
        with self._rw.write():
            key.min_decryption = version
        return key.info()

    def delete_version(self, name: str, version: int) -> KeyInfo:
        """Remove a version's sealed record, then zero its slot."""
        return self._retrying(lambda: self._delete_version(name, version))

    def _delete_version(self, name: str, version: int) -> KeyInfo:
        key = self._existing(name)
        v = key.versions.get(version)
        if v is None:
            raise VersionNotFound(f"key {name!r} has no version {version}")
        if version == key.primary:
            raise FailedPrecondition(
                f"version {version} is the primary version of {name!r}: rotate first, "
                "or delete the whole key"
            )
        mac = self._unsealed.row_mac(key, digests=[d for d in key.digests() if d[0] != version])
        self._store.delete_version(name, version, row_mac=mac)
        with self._rw.write():
            del key.versions[version]
            self.quotas.release((v,))
            v.free()
        return key.info()

    def delete(self, name: str) -> None:
        """Remove every sealed record of the key, then zero every slot."""
        self._retrying(lambda: self._delete(name))

    def _delete(self, name: str) -> None:
        key = self._existing(name, intact=False)
        self._store.delete_key(name)
        with self._rw.write():
            del self._keys[name]
            self._names.remove(name)
            self.quotas.release(key.versions.values())
            key.free()
