"""The keyring: named keys with versions, served from secret memory.

Life of a key version: generated (or opened from a wrapped import) straight
into a slot; sealed under the KEK; committed to the store; only then
published and acknowledged.  Deletion removes the sealed record first,
then zeroes the slot.  Opening a store and unsealing every version into a
slot is :mod:`secretvault.vault.unsealing`; the records themselves are
:mod:`secretvault.vault.keys`.

Locking: ``_mutate`` serialises mutations (so a name is created once and
versions are numbered without gaps); ``_rw`` lets any number of operations
read slots while a mutation publishes or frees them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace

from secretvault.api import framing
from secretvault.api.errors import (
    FailedPrecondition,
    ImportKeyUnavailable,
    IntegrityError,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    StoreSealed,
    VersionNotFound,
    WrongKeyType,
)
from secretvault.api.framing import Kind
from secretvault.api.pubkeys import encode_public_key
from secretvault.backends import Slot, SlotAllocator
from secretvault.vault import crypto
from secretvault.vault._rwlock import RWLock
from secretvault.vault.crypto import KeyType
from secretvault.vault.keys import Key, KeyInfo, Version, validate_labels, validate_name
from secretvault.vault.listing import NameIndex
from secretvault.vault.quotas import Quotas
from secretvault.vault.scratch import HmacStates
from secretvault.vault.sealing import Argon2Params, UnsealSource
from secretvault.vault.store import KeyRecord, Store, VersionRecord
from secretvault.vault.unsealing import Progress, Unsealed, unseal

_SEALED_BOX_MAGIC = framing.MAGIC + Kind.SEALED_BOX.value
# An enum member lookup (``KeyType.ED25519``) costs about 50 ns on 3.11, as
# much as the rest of an operation's lock handling: the operations use these.
_ED25519, _X25519 = KeyType.ED25519, KeyType.X25519
_XCHACHA, _HMAC = KeyType.XCHACHA20_POLY1305, KeyType.HMAC_SHA256

#: one page of a listing: the keys, and whether more follow
Page = tuple[list[KeyInfo], bool]
#: makes a new version's key: (its slot, filled; public key; length in the slot)
Fill = Callable[[], tuple[Slot, bytes | None, int]]


class Keyring:
    """Keys by name, versions by number; all key material in slots."""

    def __init__(self, allocator: SlotAllocator, store: Store, unsealed: Unsealed) -> None:
        self._alloc = allocator
        self._store = store
        self._unsealed = unsealed
        self._keys = unsealed.keys
        self._import = unsealed.import_key
        self._names = NameIndex(self._keys)
        #: versions per key and secret memory per identity (``configure`` sets the limits)
        self.quotas = Quotas(self._keys.values())
        self._mutate = threading.Lock()
        self._rw = RWLock()
        # the read side, entered by every operation (held here: one lookup
        # less on the hot path than ``self._rw.read()``)
        self._reading = self._rw.read()
        # HMAC state, reserved now: an operation on an existing key never
        # needs secret memory the keys may have taken since
        try:
            self._scratch = HmacStates(allocator)
        except BaseException:
            unsealed.close()
            raise
        self._closed = False

    @classmethod
    def open(
        cls,
        allocator: SlotAllocator,
        store: Store,
        source: UnsealSource,
        *,
        kdf: Argon2Params | None = None,
        progress: Progress | None = None,
    ) -> Keyring:
        """Unseal an existing store, or initialise a new one, and serve it.

        A wrong passphrase raises :class:`WrongPassphrase` and changes
        nothing.  Records that fail to open are kept (reported as damaged)
        and the rest of the keyring is served.
        """
        return cls(allocator, store, unseal(allocator, store, source, kdf=kdf, progress=progress))

    # --- lookups --------------------------------------------------------------

    def _get(self, name: str) -> Key:
        key = self._keys.get(name)
        if key is None:
            validate_name(name)
            raise KeyNotFound(f"no key named {name!r}")
        return key

    def _use(
        self, name: str, wanted: KeyType, op: str, version: int | None = None,
        decrypting: bool = False,
    ) -> Version:
        """The version an operation reads; call it with the read side of ``_rw`` held.

        Every operation passes here, so the usual case (the key exists, has
        the wanted type, the version is there and intact) is a few dict
        lookups; anything else takes :meth:`_refuse`, which says what is wrong.
        """
        key = self._keys.get(name)
        if key is not None and key.type is wanted:
            n = key.primary if version is None else version
            v = key.versions.get(n)
            if v is not None and v.slot is not None and not (
                    decrypting and n < key.min_decryption):
                return v
        return self._refuse(name, wanted, op, version, decrypting)

    def _refuse(self, name: str, wanted: KeyType, op: str, version: int | None,
                decrypting: bool) -> Version:
        if self._closed:
            raise StoreSealed("the keyring is closed")
        key = self._get(name)
        try:
            crypto.require(key.type, wanted, op, name)
        except WrongKeyType:
            # the stored type is part of the sealed record's associated
            # data: when the version asked for failed to unseal, the type
            # itself may be what was tampered with, so say that instead
            key.raise_if_damaged(version)
            raise
        return key.usable(version, decrypting=decrypting)

    def get(self, name: str) -> KeyInfo:
        with self._reading:
            return self._get(name).info()

    def list(self, prefix: str = "") -> list[KeyInfo]:
        """Every key whose name starts with ``prefix``, in name order."""
        with self._reading:
            return [self._keys[n].info() for n in self._names.scan(prefix, None)
                    if n in self._keys]

    def page(self, *, limit: int, prefix: str = "", after: str | None = None,
             visible: Callable[[str], bool] | None = None) -> Page:
        """One page of a listing: (up to ``limit`` keys, whether more follow).

        The keys are those whose name starts with ``prefix``, sorts after
        ``after`` and satisfies ``visible`` (None: every name), in name order.
        Filtering comes before the page is cut, so a page is full whenever
        more visible names exist, and ``after`` can be the last name of the
        previous page.  The start is found by bisection and a
        :class:`KeyInfo` is built only for the keys returned: a listing in
        pages costs O(N) in all, not O(N^2).
        """
        with self._reading:
            keys, more = self._names.page(limit, prefix, after, visible)
            return [self._keys[n].info() for n in keys], more

    def counts_by_type(self) -> dict[str, int]:
        with self._reading:
            counts = {t.value: 0 for t in KeyType}
            for k in self._keys.values():
                counts[k.type.value] += 1
            return counts

    @property
    def import_public_key(self) -> bytes:
        """The X25519 public key clients seal key material to.

        Raises :class:`ImportKeyUnavailable` when the import key's sealed
        record could not be opened at start.
        """
        if self._import.damaged is not None:
            raise self._import_unavailable()
        return self._import.public

    @property
    def import_key_damage(self) -> str | None:
        """Why wrapped import is unavailable (None: it works)."""
        return self._import.damaged

    def _import_unavailable(self) -> ImportKeyUnavailable:
        return ImportKeyUnavailable(
            f"wrapped import is unavailable: {self._import.damaged}. Every other operation "
            "works; restore the store from a backup to import keys again")

    def damaged_keys(self) -> dict[str, str]:
        """Keys that cannot be used in full, each with its first damage."""
        with self._reading:
            return {name: why for name, k in sorted(self._keys.items())
                    if (why := k.first_damage()) is not None}

    # --- mutations ------------------------------------------------------------

    def _require_open(self) -> None:
        """Mutations after close would reach a freed KEK slot: refuse them."""
        if self._closed:
            raise StoreSealed("the keyring is closed")

    @contextmanager
    def _changing(self, name: str, *, intact: bool = True) -> Iterator[Key]:
        """Hold the mutation lock over the existing key ``name``.

        Refused once the keyring is closed, and, unless ``intact`` is False,
        when the key is damaged: a key whose stored row does not parse or
        fails its MAC may be deleted, not changed (a new version would be
        sealed under a type read from that row, and a new MAC over it would
        vouch for whatever was changed).
        """
        with self._mutate:
            self._require_open()
            key = self._get(name)
            if intact and key.damaged is not None:
                raise IntegrityError(
                    f"key {key.name!r}: {key.damaged}; delete it, or restore the store from "
                    "a backup")
            yield key

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
                             crypto.SLOT_BYTES[kt], lambda: self._generate(kt), by)

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
        return self._add_key(name, kt, labels, size, fill, by)

    def adopt(self, name: str, slot: Slot, public: bytes, labels: Mapping[str, str], *,
              by: str | None = None) -> KeyInfo:
        """A new Ed25519 key whose version 1 is ``slot`` (filled, e.g. by the SSH
        agent from its socket); the slot is the keyring's now, freed on failure."""
        return self._add_key(validate_name(name), _ED25519, validate_labels(labels), 64,
                             lambda: (slot, public, 64), by)

    def _add_key(self, name: str, kt: KeyType, labels: dict[str, str], size: int, fill: Fill,
                 by: str | None) -> KeyInfo:
        with self._mutate:
            self._require_open()
            if name in self._keys:
                raise KeyExists(f"a key named {name!r} already exists")
            with self._new_version(None, kt, name, 1, size, fill, by) as (v, rec):
                key = Key(name, kt, rec.created, 1, 1, labels, {1: v})
                row = KeyRecord(name, kt.value, key.created, 1, 1, labels,
                                row_mac=self._unsealed.row_mac(key))
                self._store.create_key(row, rec)
            with self._rw.write():
                self._keys[name] = key
                self._names.add(name)
            return key.info()

    def rotate(self, name: str, *, by: str | None = None) -> KeyInfo:
        """A new primary version, made by ``by``; older ones stay for decrypt and verify."""
        with self._changing(name) as key:
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
        with self._changing(name) as key:
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
        with self._changing(name) as key:
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
        with self._changing(name, intact=False) as key:
            self._store.delete_key(name)
            with self._rw.write():
                del self._keys[name]
                self._names.remove(name)
                self.quotas.release(key.versions.values())
                key.free()

    # --- public keys ------------------------------------------------------------

    def public_key(self, name: str, version: int | None = None, fmt: str = "raw") -> bytes:
        with self._reading:
            key = self._get(name)
            v = key.exported(version)
        n = v.version
        return encode_public_key(
            key.type.value, v.public or b"", fmt, comment=f"{name}#v{n}", kid=f"{name}#v{n}"
        )

    # --- operations ---------------------------------------------------------------

    # Each operation holds the read side only while it reads the slot (a
    # delete zeroes it under the write side); framing the result needs only
    # the version number, so it happens after the release.

    def sign(self, name: str, message: bytes) -> tuple[int, bytes]:
        """(version, framed signature) with the primary version."""
        with self._reading:
            v = self._use(name, _ED25519, "sign")
            assert v.slot is not None
            sig = crypto.sign(v.slot, message)
        return v.version, framing.frame(Kind.SIGNATURE, v.version, sig)

    def verify(self, name: str, message: bytes, signature: bytes) -> bool:
        version, raw = framing.unframe(Kind.SIGNATURE, signature, exact=True)
        with self._reading:
            public = self._use(name, _ED25519, "verify", version, True).public
            assert public is not None
        return crypto.verify(public, message, raw)

    def encrypt(self, name: str, plaintext: bytes, aad: bytes = b"") -> tuple[int, bytes]:
        with self._reading:
            v = self._use(name, _XCHACHA, "encrypt")
            assert v.slot is not None
            payload = crypto.aead_encrypt(v.slot, plaintext, aad)
        return v.version, framing.frame(Kind.AEAD, v.version, payload)

    def decrypt(self, name: str, ciphertext: bytes, aad: bytes = b"") -> tuple[int, bytes]:
        """Decrypt an XChaCha20-Poly1305 ciphertext or an X25519 sealed box.

        The token's own kind picks the operation (not the stored key type,
        which a tampered store could change): a mismatch is a WrongKeyType,
        or an IntegrityError when that version failed to unseal.
        """
        if ciphertext[:3] == _SEALED_BOX_MAGIC or (ciphertext[:2] != framing.MAGIC and getattr(
                self._keys.get(name), "type", None) is _X25519):  # bare: say what it lacks
            version, box = framing.unframe(Kind.SEALED_BOX, ciphertext)
            if aad:
                raise InvalidArgument("sealed boxes take no associated data")
            with self._reading:
                v = self._use(name, _X25519, "decrypt", version, True)
                assert v.slot is not None and v.public is not None
                return version, crypto.open_sealed_box(v.slot, v.public, box)
        version, payload = framing.unframe(Kind.AEAD, ciphertext)
        with self._reading:
            v = self._use(name, _XCHACHA, "decrypt", version, True)
            assert v.slot is not None
            return version, crypto.aead_decrypt(v.slot, payload, aad)

    def mac(self, name: str, message: bytes) -> tuple[int, bytes]:
        with self._reading:
            v = self._use(name, _HMAC, "mac")
            tag = self._scratch.hmac(v.slot, v.length, message)
        return v.version, framing.frame(Kind.MAC, v.version, tag)

    def verify_mac(self, name: str, message: bytes, mac: bytes) -> bool:
        version, raw = framing.unframe(Kind.MAC, mac, exact=True)
        with self._reading:
            v = self._use(name, _HMAC, "verify_mac", version, True)
            tag = self._scratch.hmac(v.slot, v.length, message)
        return crypto.constant_time_equal(tag, raw)

    # --- teardown -------------------------------------------------------------

    def close(self) -> None:
        """Zero and free every slot (keys, import key, KEK, scratch)."""
        with self._mutate, self._rw.write():
            if self._closed:
                return
            self._closed = True
            try:
                self._scratch.close()
            finally:
                self._unsealed.close()
