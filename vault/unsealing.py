"""Opening a store: the KEK, the import key and every key version, unsealed into slots.

:func:`unseal` initialises a new store (store id, KEK check, a fresh import
key), or opens an existing one: it derives the KEK, tells a wrong
passphrase from a damaged record by the check value before anything
changes, then unseals every version straight into a slot and checks each
key row against its row MAC.  A store written before row MACs (a v1 check)
is trusted as it was, and migrated: its rows get their MACs and the v2
check in one transaction.  Records that cannot be opened are kept, each
saying why it is damaged, and everything else is served.

What it yields, :class:`Unsealed`, owns every slot the keyring holds and
is what seals new versions and MACs changed rows while the keyring serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from secretvault.api.errors import IntegrityError, WrongPassphrase
from secretvault.backends import Slot, SlotAllocator
from secretvault.vault import crypto
from secretvault.vault.crypto import KeyType
from secretvault.vault.keys import Key, Version
from secretvault.vault.sealing import (
    IMPORT_KEY_AD,
    Argon2Params,
    Kek,
    UnsealSource,
    row_mac_message,
    version_ad,
)
from secretvault.vault.store_protocol import AlreadyInitialised, KeyRecord, Store, VersionRecord

#: 2: key rows carry a row MAC (a store of format 1 is migrated on unseal)
STORE_FORMAT = b"2"
#: why a key whose row MAC does not verify is damaged
ROW_TAMPERED = (
    "its metadata failed authentication: its stored row (type, created time, primary or "
    "minimum decryption version, labels) or its set of version records was changed "
    "outside the vault (tampering, or part of the store restored from a backup); restore "
    "the store from a backup, or delete the key")
ROW_UNAUTHENTICATED = (
    "its metadata failed authentication: its stored row has no row MAC, though this store "
    "authenticates every key row (the MAC was removed outside the vault); restore the "
    "store from a backup, or delete the key")
STORE_ID_BYTES = 16
IMPORT_KEY_BYTES = crypto.SLOT_BYTES[KeyType.X25519]

#: ``progress(done, total)``: called with (0, total) as unsealing begins,
#: then after each key version
Progress = Callable[[int, int], None]


@dataclass(eq=False, slots=True)
class ImportKey:
    """The vault's X25519 key that clients seal imported key material to."""

    slot: Slot | None = None
    public: bytes = b""
    #: why wrapped import is off (the sealed record is missing or damaged)
    damaged: str | None = None

    def opener(self, allocator: SlotAllocator, kt: KeyType, wrapped: bytes
               ) -> tuple[int, Callable[[], tuple[Slot, bytes | None, int]]]:
        """(the slot size, the fill) of a key of type ``kt`` opened from
        ``wrapped``; the fill returns (its slot, its public key, the size)."""
        length = crypto.wrapped_length(kt, wrapped)
        # Ed25519 imports a 32-byte seed and keeps libsodium's 64-byte form
        size = crypto.SLOT_BYTES[kt] if kt is KeyType.ED25519 else length

        def fill() -> tuple[Slot, bytes | None, int]:
            assert self.slot is not None
            slot = allocator.allocate(size)
            try:
                with allocator.allocate(length) as opened:
                    crypto.open_sealed_box_into(self.slot, self.public, wrapped, opened, length)
                    public = crypto.expand_import(kt, opened, length, slot)
            except BaseException:
                slot.free()
                raise
            return slot, public, size

        return size, fill


class Unsealed:
    """An unsealed store's secrets, each in a slot, and what seals more.

    It owns the KEK, the row-MAC key (derived once per unseal, into a secret
    slot), the import key and every key version; :meth:`close` zeroes and
    frees them all.
    """

    def __init__(self, allocator: SlotAllocator, store_id: bytes, kek: Kek) -> None:
        self.store_id = store_id
        self.kek = kek
        try:
            self.row_key = kek.row_mac_key(allocator)
        except BaseException:
            kek.close()
            raise
        self.keys: dict[str, Key] = {}
        self.import_key = ImportKey()

    def seal(self, key_type: KeyType, name: str, version: int, slot: Slot, length: int,
             public: bytes | None) -> VersionRecord:
        """The stored record of a new version, sealed under the KEK."""
        nonce, sealed = self.kek.seal(slot, length, version_ad(
            self.store_id, name, version, key_type.value))
        return VersionRecord(version, time.time(), public, nonce, sealed)

    def row_mac(self, key: Key, *, type_name: str | None = None, primary: int | None = None,
                min_decryption: int | None = None,
                digests: list[tuple[int, bytes]] | None = None) -> bytes:
        """The MAC of ``key``'s row and its versions' digests as stored: its
        state, with the fields a mutation is about to change (``type_name``:
        the type as the stored row spells it, when loading)."""
        return self.row_key.mac(row_mac_message(
            self.store_id, key.name, key.type.value if type_name is None else type_name,
            key.created, key.primary if primary is None else primary,
            key.min_decryption if min_decryption is None else min_decryption,
            key.labels, key.digests() if digests is None else digests))

    def close(self) -> None:
        """Zero and free every slot: key versions, import key, row-MAC key, KEK."""
        for key in self.keys.values():
            key.free()
        self.keys.clear()
        if self.import_key.slot is not None:
            self.import_key.slot.free()
        self.row_key.close()
        self.kek.close()


def unseal(
    allocator: SlotAllocator,
    store: Store,
    source: UnsealSource,
    *,
    kdf: Argon2Params | None = None,
    progress: Progress | None = None,
) -> Unsealed:
    """Unseal an existing store, or initialise a new one.

    A wrong passphrase raises :class:`WrongPassphrase` and changes
    nothing.  Records that fail to open are kept (reported as damaged)
    and the rest of the keyring is served.
    """
    # read before the keys: a change committed while they load is applied
    # again by the follower (applying is idempotent), none is missed
    store.position = store.feed_head()
    store_id = store.get_meta("store_id")
    if store_id is None:
        try:
            return _initialise(allocator, store, source, kdf or Argon2Params())
        except AlreadyInitialised:  # another replica's first start won
            return unseal(allocator, store, source, kdf=kdf, progress=progress)
    kind = (store.get_meta("kek_source") or b"").decode(errors="backslashreplace")
    if kind != source.kind:
        raise WrongPassphrase(
            f"this store is unsealed with a {kind}, but a {source.kind} was given"
        )
    kdf_params = None
    if source.kind == "passphrase":
        raw = store.get_meta("kdf")
        if raw is None:
            raise IntegrityError("the store's Argon2id parameters are missing")
        kdf_params = Argon2Params.from_json(raw)
    kek = Kek.derive(allocator, source, kdf_params)
    check_version = kek.check_version(store.get_meta("kek_check") or b"")
    if check_version is None:
        kek.close()
        raise WrongPassphrase(
            f"the {source.kind} does not unseal this store; nothing was changed"
        )
    unsealed = Unsealed(allocator, store_id, kek)
    try:
        loader = _Loader(allocator, store, unsealed)
        loader.load_import_key()
        # a v1 check: the store was written before key rows had MACs
        legacy = check_version == 1
        pending = loader.load_keys(progress, legacy=legacy)
        if legacy:
            # the rows were trusted as they were before this change: they
            # get their MACs now, with the v2 check that says every row
            # has one from here on (one transaction: a crash leaves the
            # store as it was, and the next unseal migrates it again)
            store.migrate_row_macs(
                pending, {"kek_check": kek.make_check(), "format": STORE_FORMAT})
    except BaseException:
        unsealed.close()
        raise
    return unsealed


def reload_key(allocator: SlotAllocator, store: Store, unsealed: Unsealed, rec: KeyRecord,
               keep: Mapping[int, Version]) -> tuple[Key, str | None]:
    """Key ``rec`` as it is stored now, for the change feed's follower.

    A version in ``keep`` (the copy being served) whose stored record is the
    same (its digest) is reused, slot and all; every other version is
    unsealed into a new slot.  Returns the key and why its row cannot be
    trusted (None: its row MAC verifies): the caller damages it under the
    keyring's write lock, since reused slots may be in use until then.
    """
    loader = _Loader(allocator, store, unsealed)
    key_type = KeyType.lookup(rec.type)
    key = Key(rec.name, key_type or KeyType.HMAC_SHA256, rec.created, rec.primary_version,
              rec.min_decryption_version, dict(rec.labels),
              damaged=None if rec.damaged is None else (
                  f"its stored record does not parse ({rec.damaged})"))
    try:
        for v in rec.versions:
            fresh = Version.of(v)
            old = keep.get(v.version)
            if (old is not None and old.digest == fresh.digest and old.slot is not None
                    and key.damaged is None):
                key.versions[v.version] = old
                continue
            key.versions[v.version] = fresh
            why = key.damaged or loader._unseal_into(fresh, rec, v, key_type)
            if why is not None:
                fresh.damage(why)
    except BaseException:
        for n, made in key.versions.items():
            if keep.get(n) is not made:
                made.free()
        raise
    if key.damaged is not None:
        return key, None
    if rec.row_mac is None:
        return key, ROW_UNAUTHENTICATED
    mac = unsealed.row_mac(key, type_name=rec.type)
    return key, None if crypto.constant_time_equal(mac, rec.row_mac) else ROW_TAMPERED


def _initialise(
    allocator: SlotAllocator, store: Store, source: UnsealSource, params: Argon2Params
) -> Unsealed:
    store_id = crypto.random_bytes(STORE_ID_BYTES)
    meta: dict[str, bytes] = {
        "store_id": store_id,
        "format": STORE_FORMAT,
        "kek_source": source.kind.encode(),
    }
    kdf = None
    if source.kind == "passphrase":
        salt = crypto.random_bytes(crypto.SALT_BYTES)
        kdf = (params, salt)
        meta["kdf"] = params.to_json(salt)
    kek = Kek.derive(allocator, source, kdf)
    unsealed = Unsealed(allocator, store_id, kek)
    try:
        meta["kek_check"] = kek.make_check()
        imp = unsealed.import_key
        imp.slot = allocator.allocate(IMPORT_KEY_BYTES)
        imp.public = crypto.generate(KeyType.X25519, imp.slot) or b""
        nonce, sealed = kek.seal(imp.slot, IMPORT_KEY_BYTES, IMPORT_KEY_AD + store_id)
        meta["import_key"] = nonce + sealed
        meta["import_public"] = imp.public
        store.init_meta(meta)
    except BaseException:
        unsealed.close()
        raise
    return unsealed


class _Loader:
    """Unseals an existing store's records into ``unsealed``."""

    def __init__(self, allocator: SlotAllocator, store: Store, unsealed: Unsealed) -> None:
        self._alloc = allocator
        self._store = store
        self._unsealed = unsealed
        # read once per version below
        self._kek = unsealed.kek
        self._store_id = unsealed.store_id

    def load_import_key(self) -> None:
        """Unseal the import key; when its record is damaged, serve without it.

        Only wrapped import needs it: every stored key is sealed under the
        KEK, not under the import key, so a damaged import key record takes
        away ImportKey and GetImportKey (FAILED_PRECONDITION, naming the
        damage) and nothing else.
        """
        imp = self._unsealed.import_key
        raw = self._store.get_meta("import_key")
        if raw is None:
            imp.damaged = "the store has no sealed import key record ('import_key')"
            return
        slot = self._alloc.allocate(IMPORT_KEY_BYTES)
        n = crypto.NONCE_BYTES
        try:
            self._kek.unseal_into(slot, raw[:n], raw[n:], IMPORT_KEY_AD + self._store_id)
        except IntegrityError:
            slot.free()
            imp.damaged = (
                "the vault's sealed import key (the store's 'import_key' record) failed "
                "authentication: it is corrupted or was tampered with")
            return
        imp.slot = slot
        imp.public = crypto.derive_public(KeyType.X25519, slot) or b""

    def load_keys(self, progress: Progress | None, *, legacy: bool) -> dict[str, bytes]:
        """Unseal every key; returns the row MACs to write for rows that have
        none in a ``legacy`` store (one from before row MACs)."""
        pending: dict[str, bytes] = {}
        total = self._store.count()
        done = 0
        if progress is not None:
            progress(0, total)
        for rec in self._store.load():
            key_type = KeyType.lookup(rec.type)
            key = Key(
                rec.name,
                key_type or KeyType.HMAC_SHA256,
                rec.created,
                rec.primary_version,
                rec.min_decryption_version,
                dict(rec.labels),
                damaged=None if rec.damaged is None else (
                    f"its stored record does not parse ({rec.damaged})"),
            )
            # held from the start: a failure part-way still frees its slots
            self._unsealed.keys[rec.name] = key
            for v in rec.versions:
                version = key.versions[v.version] = Version.of(v)
                # when the row that says what this key is cannot be trusted,
                # nothing is unsealed for it (its type may be wrong too)
                why = key.damaged or self._unseal_into(version, rec, v, key_type)
                if why is not None:
                    version.damage(why)
                done += 1
                if progress is not None:
                    progress(done, total)
            if key.damaged is None:
                self._check_row(rec, key, legacy, pending)
        if progress is not None and done != total:
            # version rows without a key row (an edit by hand) are counted
            # by count() but never loaded: the bar still ends full
            progress(done, done)
        return pending

    def _check_row(self, rec: KeyRecord, key: Key, legacy: bool,
                   pending: dict[str, bytes]) -> None:
        """Verify the key's row MAC; on failure the key is damaged as a whole.

        Versions are unsealed first, so that a version whose own record is
        damaged keeps that more precise reason; the others are zeroed and
        marked with the key's.
        """
        # over the row as stored (a type the vault does not know included)
        mac = self._unsealed.row_mac(key, type_name=rec.type)
        if rec.row_mac is None:
            if legacy:
                # written before row MACs existed: trusted, as it was then
                pending[rec.name] = mac
                return
            key.damage(ROW_UNAUTHENTICATED)
        elif not crypto.constant_time_equal(mac, rec.row_mac):
            key.damage(ROW_TAMPERED)

    def _unseal_into(self, version: Version, rec: KeyRecord, v: VersionRecord,
                     key_type: KeyType | None) -> str | None:
        """Open ``v`` into a new slot for ``version``; None, or why it is damaged."""
        if key_type is None:
            return f"unknown key type {rec.type!r}"
        if v.damaged is not None:
            return f"its stored record does not parse ({v.damaged})"
        # the sealed length is the key's length (HMAC keys vary); a corrupted
        # length must damage this record only, not size a slot (a length past
        # the largest slot class would abort the whole unseal)
        length = len(v.sealed) - crypto.TAG_BYTES
        lo, hi = crypto.STORED_BYTES[key_type]
        if not lo <= length <= hi:
            return (f"sealed record holds {length} bytes; a {key_type.value} key is "
                    + (str(lo) if lo == hi else f"{lo} to {hi}") + " bytes")
        slot = self._alloc.allocate(length)
        ad = version_ad(self._store_id, rec.name, v.version, rec.type)
        try:
            version.length = self._kek.unseal_into(slot, v.nonce, v.sealed, ad)
        except IntegrityError:
            slot.free()
            return ("sealed record failed authentication (corrupted, or tampered with: "
                    "name, version, type or store id do not match)")
        version.slot = slot
        if key_type.asymmetric and crypto.derive_public(key_type, slot) != v.public_key:
            return "stored public key does not match the sealed secret key"
        return None
