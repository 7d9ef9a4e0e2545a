"""The keyring: named keys with versions, in secret memory, sealed on disk.

Life of a key version: generated (or opened from a wrapped import) straight
into a slot; sealed under the KEK; committed to the store; only then
published and acknowledged.  On start every version is unsealed straight
into a slot.  Deletion removes the sealed record first, then zeroes the slot.

Locking: ``_mutate`` serialises mutations (so a name is created once and
versions are numbered without gaps); ``_rw`` lets any number of operations
read slots while a mutation publishes or frees them.
"""

from __future__ import annotations

import bisect
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from secretvault.api import framing
from secretvault.api.errors import (
    DecryptionFailed,
    FailedPrecondition,
    ImportKeyUnavailable,
    IntegrityError,
    InvalidArgument,
    InvalidImport,
    InvalidKeyName,
    KeyExists,
    KeyNotFound,
    StoreSealed,
    VersionNotFound,
    WrongKeyType,
    WrongPassphrase,
)
from secretvault.api.framing import Kind
from secretvault.api.pubkeys import encode_public_key
from secretvault.backends import Slot, SlotAllocator
from secretvault.backends import _sodium as na
from secretvault.vault import crypto
from secretvault.vault._rwlock import RWLock
from secretvault.vault.crypto import KeyType
from secretvault.vault.sealing import (
    IMPORT_KEY_AD,
    Argon2Params,
    Kek,
    UnsealSource,
    row_mac_message,
    version_ad,
    version_digest,
)
from secretvault.vault.store import KeyRecord, Store, VersionRecord

#: Key names: 1 to 128 characters from ``A-Z a-z 0-9 . _ - /``, starting with
#: a letter or digit, with no empty, ``.`` or ``..`` path segment.  Slashes
#: let policies grant ``team/*`` patterns.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
MAX_LABELS = 32
MAX_LABEL_LEN = 256
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
_SEALED_BOX_MAGIC = framing.MAGIC + Kind.SEALED_BOX.value
_AEAD_MIN = na.AEAD_XCHACHA_NPUBBYTES + na.AEAD_XCHACHA_ABYTES


def _digest(rec: VersionRecord) -> bytes:
    return version_digest(rec.version, rec.created, rec.public_key, rec.nonce, rec.sealed)


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or any(
        seg in ("", ".", "..") for seg in name.split("/")
    ):
        raise InvalidKeyName(
            f"invalid key name {name[:140]!r}: use 1-128 characters from A-Z a-z 0-9 . _ - /, "
            "starting with a letter or digit, with no empty, '.' or '..' segment"
        )
    return name


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels per key")
    for k, v in labels.items():
        if not k or len(k) > MAX_LABEL_LEN or len(v) > MAX_LABEL_LEN:
            raise InvalidArgument(
                f"label keys must be 1-{MAX_LABEL_LEN} characters and values at most "
                f"{MAX_LABEL_LEN}"
            )
    return dict(labels)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    created: float
    public_key: bytes | None
    damaged: str | None = None  # why the sealed record could not be opened


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    type: KeyType
    created: float
    primary_version: int
    min_decryption_version: int
    labels: Mapping[str, str]
    versions: tuple[VersionInfo, ...]
    damaged: str | None = None  # why the key's own stored row could not be read


@dataclass(eq=False, slots=True)
class _Version:
    version: int
    created: float
    public: bytes | None
    slot: Slot | None
    length: int
    damaged: str | None = None
    #: ``sealing.version_digest`` of the stored record, for the key's row MAC
    digest: bytes = b""

    def info(self) -> VersionInfo:
        return VersionInfo(self.version, self.created, self.public, self.damaged)


@dataclass(eq=False, slots=True)
class _Key:
    name: str
    type: KeyType
    created: float
    primary: int
    min_decryption: int
    labels: dict[str, str]
    versions: dict[int, _Version] = field(default_factory=dict)
    # the stored key row does not parse, or fails its row MAC: no version is usable
    damaged: str | None = None

    def digests(self) -> list[tuple[int, bytes]]:
        return [(n, v.digest) for n, v in self.versions.items()]

    def info(self) -> KeyInfo:
        return KeyInfo(
            self.name,
            self.type,
            self.created,
            self.primary,
            self.min_decryption,
            dict(self.labels),
            tuple(v.info() for _, v in sorted(self.versions.items())),
            self.damaged,
        )


Progress = Callable[[int, int], None]
#: one page of a listing: the keys, and whether more follow
Page = tuple[list[KeyInfo], bool]


class Keyring:
    """Keys by name, versions by number; all key material in slots."""

    def __init__(self, allocator: SlotAllocator, store: Store, kek: Kek, store_id: bytes) -> None:
        self._alloc = allocator
        self._store = store
        self._kek = kek
        self._store_id = store_id
        try:
            # derived once per unseal, into a secret slot
            self._row_key = kek.row_mac_key(allocator)
        except BaseException:
            kek.close()
            raise
        self._keys: dict[str, _Key] = {}
        # every name, sorted, for listing: built on the first listing, then kept
        # sorted by the mutations (under the write side of _rw)
        self._names: list[str] | None = None
        self._import_slot: Slot | None = None
        self._import_public = b""
        self._import_damaged: str | None = None  # why wrapped import is off
        self._mutate = threading.Lock()
        self._rw = RWLock()
        self._scratch: list[Slot] = []
        self._closed = False

    # --- opening ----------------------------------------------------------------

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
        """Unseal an existing store, or initialise a new one.

        A wrong passphrase raises :class:`WrongPassphrase` and changes
        nothing.  Records that fail to open are kept (reported as damaged)
        and the rest of the keyring is served.
        """
        store_id = store.get_meta("store_id")
        if store_id is None:
            return cls._initialise(allocator, store, source, kdf or Argon2Params())
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
        check = store.get_meta("kek_check") or b""
        check_version = kek.check_version(check)
        if check_version is None:
            kek.close()
            raise WrongPassphrase(
                f"the {source.kind} does not unseal this store; nothing was changed"
            )
        ring = cls(allocator, store, kek, store_id)
        try:
            ring._load_import_key()
            # a v1 check: the store was written before key rows had MACs
            legacy = check_version == 1
            pending = ring._load_keys(progress, legacy=legacy)
            if legacy:
                # the rows were trusted as they were before this change: they
                # get their MACs now, with the v2 check that says every row
                # has one from here on (one transaction: a crash leaves the
                # store as it was, and the next unseal migrates it again)
                store.migrate_row_macs(
                    pending, {"kek_check": kek.make_check(), "format": STORE_FORMAT})
        except BaseException:
            ring.close()
            raise
        return ring

    @classmethod
    def _initialise(
        cls, allocator: SlotAllocator, store: Store, source: UnsealSource, params: Argon2Params
    ) -> Keyring:
        store_id = na.random_bytes(16)
        meta: dict[str, bytes] = {
            "store_id": store_id,
            "format": STORE_FORMAT,
            "kek_source": source.kind.encode(),
        }
        kdf = None
        if source.kind == "passphrase":
            salt = na.random_bytes(na.PWHASH_SALTBYTES)
            kdf = (params, salt)
            meta["kdf"] = params.to_json(salt)
        kek = Kek.derive(allocator, source, kdf)
        ring = cls(allocator, store, kek, store_id)
        try:
            meta["kek_check"] = kek.make_check()
            slot = allocator.allocate(32)
            ring._import_slot = slot
            ring._import_public = crypto.generate(KeyType.X25519, slot) or b""
            nonce, sealed = kek.seal(slot, 32, IMPORT_KEY_AD + store_id)
            meta["import_key"] = nonce + sealed
            meta["import_public"] = ring._import_public
            store.init_meta(meta)
        except BaseException:
            ring.close()
            raise
        return ring

    def _load_import_key(self) -> None:
        """Unseal the import key; when its record is damaged, serve without it.

        Only wrapped import needs it: every stored key is sealed under the
        KEK, not under the import key, so a damaged import key record takes
        away ImportKey and GetImportKey (FAILED_PRECONDITION, naming the
        damage) and nothing else.
        """
        raw = self._store.get_meta("import_key")
        if raw is None:
            self._import_damaged = "the store has no sealed import key record ('import_key')"
            return
        slot = self._alloc.allocate(32)
        n = na.AEAD_XCHACHA_NPUBBYTES
        try:
            self._kek.unseal_into(slot, raw[:n], raw[n:], IMPORT_KEY_AD + self._store_id)
        except IntegrityError:
            slot.free()
            self._import_damaged = (
                "the vault's sealed import key (the store's 'import_key' record) failed "
                "authentication: it is corrupted or was tampered with")
            return
        self._import_slot = slot
        self._import_public = crypto.derive_public(KeyType.X25519, slot) or b""

    def _load_keys(self, progress: Progress | None, *, legacy: bool) -> dict[str, bytes]:
        """Unseal every key; returns the row MACs to write for rows that have
        none in a ``legacy`` store (one from before row MACs)."""
        pending: dict[str, bytes] = {}
        total = self._store.count()
        done = 0
        if progress is not None:
            progress(0, total)
        for rec in self._store.load():
            key_type = KeyType(rec.type) if rec.type in KeyType._value2member_map_ else None
            key = _Key(
                rec.name,
                key_type or KeyType.HMAC_SHA256,
                rec.created,
                rec.primary_version,
                rec.min_decryption_version,
                dict(rec.labels),
                damaged=None if rec.damaged is None else (
                    f"its stored record does not parse ({rec.damaged})"),
            )
            for v in rec.versions:
                if key.damaged is not None:
                    # the row that says what this key is cannot be trusted:
                    # nothing is unsealed for it (its type may be wrong too)
                    key.versions[v.version] = _Version(
                        v.version, v.created, v.public_key, None, 0, key.damaged)
                else:
                    key.versions[v.version] = self._unseal_version(rec, v, key_type)
                key.versions[v.version].digest = version_digest(
                    v.version, v.created, v.public_key, v.nonce, v.sealed)
                done += 1
                if progress is not None:
                    progress(done, total)
            if key.damaged is None:
                self._check_row(rec, key, legacy, pending)
            self._keys[rec.name] = key
        if progress is not None and done != total:
            # version rows without a key row (an edit by hand) are counted
            # by count() but never loaded: the bar still ends full
            progress(done, done)
        return pending

    def _check_row(self, rec: KeyRecord, key: _Key, legacy: bool,
                   pending: dict[str, bytes]) -> None:
        """Verify the key's row MAC; on failure the key is damaged as a whole.

        Versions are unsealed first, so that a version whose own record is
        damaged keeps that more precise reason; the others are zeroed and
        marked with the key's.
        """
        mac = self._row_mac(rec.name, rec.type, rec.created, rec.primary_version,
                            rec.min_decryption_version, rec.labels, key.digests())
        if rec.row_mac is None:
            if legacy:
                # written before row MACs existed: trusted, as it was then
                pending[rec.name] = mac
                return
            why = ROW_UNAUTHENTICATED
        elif na.constant_time_equal(mac, rec.row_mac):
            return
        else:
            why = ROW_TAMPERED
        key.damaged = why
        for n, v in list(key.versions.items()):
            if v.damaged is None:
                if v.slot is not None:
                    v.slot.free()
                key.versions[n] = _Version(v.version, v.created, v.public, None, 0, why,
                                           v.digest)

    def _row_mac(self, name: str, key_type: str, created: float, primary: int,
                 min_decryption: int, labels: Mapping[str, str],
                 digests: list[tuple[int, bytes]]) -> bytes:
        return self._row_key.mac(row_mac_message(
            self._store_id, name, key_type, created, primary, min_decryption, labels,
            digests))

    def _unseal_version(
        self, rec: KeyRecord, v: VersionRecord, key_type: KeyType | None
    ) -> _Version:
        if key_type is None:
            return _Version(v.version, v.created, v.public_key, None, 0,
                            f"unknown key type {rec.type!r}")
        if v.damaged is not None:
            return _Version(v.version, v.created, v.public_key, None, 0,
                            f"its stored record does not parse ({v.damaged})")
        # the sealed length is the key's length (HMAC keys vary); a corrupted
        # length must damage this record only, not size a slot (a length past
        # the largest slot class would abort the whole unseal)
        length = len(v.sealed) - na.AEAD_XCHACHA_ABYTES
        lo, hi = crypto.STORED_BYTES[key_type]
        if not lo <= length <= hi:
            return _Version(
                v.version, v.created, v.public_key, None, 0,
                f"sealed record holds {length} bytes; a {key_type.value} key is "
                + (str(lo) if lo == hi else f"{lo} to {hi}") + " bytes",
            )
        slot = self._alloc.allocate(length)
        ad = version_ad(self._store_id, rec.name, v.version, rec.type)
        try:
            length = self._kek.unseal_into(slot, v.nonce, v.sealed, ad)
        except IntegrityError:
            slot.free()
            return _Version(
                v.version, v.created, v.public_key, None, 0,
                "sealed record failed authentication (corrupted, or tampered with: "
                "name, version, type or store id do not match)",
            )
        if key_type.asymmetric and crypto.derive_public(key_type, slot) != v.public_key:
            slot.free()
            return _Version(v.version, v.created, v.public_key, None, 0,
                            "stored public key does not match the sealed secret key")
        return _Version(v.version, v.created, v.public_key, slot, length)

    # --- lookups --------------------------------------------------------------

    def _get(self, name: str) -> _Key:
        key = self._keys.get(name)
        if key is None:
            validate_name(name)
            raise KeyNotFound(f"no key named {name!r}")
        return key

    def _version(self, key: _Key, version: int | None, *, decrypting: bool) -> _Version:
        n = key.primary if version is None else version
        v = key.versions.get(n)
        if v is None:
            if key.damaged is not None:
                raise IntegrityError(f"key {key.name!r}: {key.damaged}")
            raise VersionNotFound(f"key {key.name!r} has no version {n}")
        if decrypting and n < key.min_decryption:
            raise VersionNotFound(
                f"key {key.name!r} version {n} is below the minimum decryption version "
                f"{key.min_decryption}"
            )
        if v.slot is None:
            raise IntegrityError(f"key {key.name!r} version {n}: {v.damaged}")
        return v

    def _use(
        self, name: str, wanted: KeyType, op: str, version: int | None = None,
        decrypting: bool = False,
    ) -> _Version:
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
                decrypting: bool) -> _Version:
        if self._closed:
            raise StoreSealed("the keyring is closed")
        key = self._get(name)
        try:
            crypto.require(key.type, wanted, op, name)
        except WrongKeyType:
            # the stored type is part of the sealed record's associated
            # data: when the version asked for failed to unseal, the type
            # itself may be what was tampered with, so say that instead
            self._raise_if_damaged(key, version)
            raise
        return self._version(key, version, decrypting=decrypting)

    @staticmethod
    def _raise_if_damaged(key: _Key, version: int | None) -> None:
        n = key.primary if version is None else version
        v = key.versions.get(n)
        if v is not None and v.damaged is not None:
            raise IntegrityError(f"key {key.name!r} version {n}: {v.damaged}")
        if key.damaged is not None:
            raise IntegrityError(f"key {key.name!r}: {key.damaged}")

    def get(self, name: str) -> KeyInfo:
        with self._rw.read():
            return self._get(name).info()

    def list(self, prefix: str = "") -> list[KeyInfo]:
        """Every key whose name starts with ``prefix``, in name order."""
        with self._rw.read():
            return [self._keys[n].info() for n in self._scan(prefix, None)
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
        if limit < 1:
            raise ValueError("limit must be at least 1")
        out: list[_Key] = []
        more = False
        with self._rw.read():
            keys = self._keys
            for name in self._scan(prefix, after):
                if visible is not None and not visible(name):
                    continue
                key = keys.get(name)
                if key is None:  # closed meanwhile
                    continue
                if len(out) == limit:
                    more = True
                    break
                out.append(key)
            return [k.info() for k in out], more

    def _scan(self, prefix: str, after: str | None) -> Iterator[str]:
        """Names starting with ``prefix`` and sorting after ``after``, in order
        (call it with the read side of ``_rw`` held)."""
        names = self._names
        if names is None:
            # readers may build it side by side: each builds the same list
            names = self._names = sorted(self._keys)
        start = bisect.bisect_left(names, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(names, after))
        # the names starting with prefix are contiguous in sorted order
        return itertools.takewhile(lambda n: n.startswith(prefix),
                                   itertools.islice(names, start, None))

    def _name_added(self, name: str) -> None:
        """Keep the sorted names (write side of ``_rw`` held)."""
        if self._names is not None:
            bisect.insort(self._names, name)

    def _name_removed(self, name: str) -> None:
        names = self._names
        if names is not None:
            i = bisect.bisect_left(names, name)
            if i < len(names) and names[i] == name:
                del names[i]

    def counts_by_type(self) -> dict[str, int]:
        with self._rw.read():
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
        if self._import_damaged is not None:
            raise self._import_unavailable()
        return self._import_public

    @property
    def import_key_damage(self) -> str | None:
        """Why wrapped import is unavailable (None: it works)."""
        return self._import_damaged

    def _import_unavailable(self) -> ImportKeyUnavailable:
        return ImportKeyUnavailable(
            f"wrapped import is unavailable: {self._import_damaged}. Every other operation "
            "works; restore the store from a backup to import keys again")

    def damaged_keys(self) -> dict[str, str]:
        """Keys that cannot be used in full, each with its first damage."""
        with self._rw.read():
            out: dict[str, str] = {}
            for name, k in sorted(self._keys.items()):
                why = k.damaged or next(
                    (f"version {n}: {v.damaged}" for n, v in sorted(k.versions.items())
                     if v.damaged is not None), None)
                if why is not None:
                    out[name] = why
            return out

    # --- mutations ------------------------------------------------------------

    def _require_open(self) -> None:
        """Mutations after close would reach a freed KEK slot: refuse them."""
        if self._closed:
            raise StoreSealed("the keyring is closed")

    @staticmethod
    def _require_intact(key: _Key) -> None:
        """A key whose stored row does not parse may be deleted, not changed:
        a new version would be sealed under a type read from that row."""
        if key.damaged is not None:
            raise IntegrityError(
                f"key {key.name!r}: {key.damaged}; delete it, or restore the store from a "
                "backup")

    def _seal_new(self, key_type: KeyType, name: str, version: int, slot: Slot, length: int,
                  public: bytes | None) -> VersionRecord:
        nonce, sealed = self._kek.seal(slot, length, version_ad(
            self._store_id, name, version, key_type.value))
        return VersionRecord(version, time.time(), public, nonce, sealed)

    def create(
        self, name: str, key_type: KeyType | str, labels: Mapping[str, str] | None = None
    ) -> KeyInfo:
        """A new key with a fresh version 1.  Returns once it is durable."""
        kt = KeyType.parse(key_type) if isinstance(key_type, str) else key_type
        return self._add_key(validate_name(name), kt, validate_labels(labels or {}),
                             lambda: self._generate(kt))

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
        labels: Mapping[str, str] | None = None,
    ) -> KeyInfo:
        """A new key whose version 1 is opened from a sealed box, into a slot.

        ``wrapped`` is ``crypto_box_seal(material, import_public_key)``: the
        material never exists outside the client and the vault's slot.
        """
        kt = KeyType.parse(key_type) if isinstance(key_type, str) else key_type
        validate_name(name)
        labels = validate_labels(labels or {})
        if self._import_damaged is not None:
            raise self._import_unavailable()
        lo, hi = crypto.IMPORT_BYTES[kt]
        length = len(wrapped) - na.BOX_SEALBYTES
        if not lo <= length <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise InvalidImport(
                f"a wrapped {kt.value} key is {want} bytes sealed (+{na.BOX_SEALBYTES}); "
                f"got {len(wrapped)} bytes"
            )

        # Ed25519 imports a 32-byte seed and keeps libsodium's 64-byte form
        size = crypto.SLOT_BYTES[kt] if kt is KeyType.ED25519 else length

        def fill() -> tuple[Slot, bytes | None, int]:
            assert self._import_slot is not None
            slot = self._alloc.allocate(size)
            try:
                with self._alloc.allocate(length) as opened:
                    na.crypto_box_seal_open_into(
                        opened.ptr, length, wrapped, self._import_public, self._import_slot.ptr
                    )
                    public = crypto.expand_import(kt, opened, length, slot)
            except BaseException:
                slot.free()
                raise
            return slot, public, size

        return self._add_key(name, kt, labels, fill)

    def _add_key(
        self, name: str, kt: KeyType, labels: dict[str, str],
        fill: Callable[[], tuple[Slot, bytes | None, int]],
    ) -> KeyInfo:
        with self._mutate:
            self._require_open()
            if name in self._keys:
                raise KeyExists(f"a key named {name!r} already exists")
            slot, public, length = fill()
            try:
                rec = self._seal_new(kt, name, 1, slot, length, public)
                now = rec.created
                digest = _digest(rec)
                mac = self._row_mac(name, kt.value, now, 1, 1, labels, [(1, digest)])
                self._store.create_key(
                    KeyRecord(name, kt.value, now, 1, 1, labels, row_mac=mac), rec)
            except BaseException:
                slot.free()
                raise
            key = _Key(name, kt, now, 1, 1, labels)
            key.versions[1] = _Version(1, now, public, slot, length, digest=digest)
            with self._rw.write():
                self._keys[name] = key
                self._name_added(name)
            return key.info()

    def rotate(self, name: str) -> KeyInfo:
        """A new primary version; older ones stay for decrypt and verify."""
        with self._mutate:
            self._require_open()
            key = self._get(name)
            self._require_intact(key)
            n = max(key.versions, default=0) + 1
            kt = key.type
            slot, public, length = self._generate(kt)
            try:
                rec = self._seal_new(kt, name, n, slot, length, public)
                digest = _digest(rec)
                mac = self._row_mac(name, kt.value, key.created, n, key.min_decryption,
                                    key.labels, [*key.digests(), (n, digest)])
                self._store.add_version(name, rec, row_mac=mac)
            except BaseException:
                slot.free()
                raise
            with self._rw.write():
                key.versions[n] = _Version(n, rec.created, public, slot, length,
                                           digest=digest)
                key.primary = n
            return key.info()

    def set_min_decryption_version(self, name: str, version: int) -> KeyInfo:
        with self._mutate:
            self._require_open()
            key = self._get(name)
            self._require_intact(key)
            if not 1 <= version <= key.primary:
                raise InvalidArgument(
                    f"the minimum decryption version of {name!r} must be between 1 and its "
                    f"primary version {key.primary}; got {version}"
                )
            mac = self._row_mac(name, key.type.value, key.created, key.primary, version,
                                key.labels, key.digests())
            self._store.set_min_decryption_version(name, version, row_mac=mac)
            with self._rw.write():
                key.min_decryption = version
            return key.info()

    def delete_version(self, name: str, version: int) -> KeyInfo:
        """Remove a version's sealed record, then zero its slot."""
        with self._mutate:
            self._require_open()
            key = self._get(name)
            # a damaged key's row is not trusted: a new MAC over it would
            # vouch for whatever was changed
            self._require_intact(key)
            v = key.versions.get(version)
            if v is None:
                raise VersionNotFound(f"key {name!r} has no version {version}")
            if version == key.primary:
                raise FailedPrecondition(
                    f"version {version} is the primary version of {name!r}: rotate first, "
                    "or delete the whole key"
                )
            mac = self._row_mac(name, key.type.value, key.created, key.primary,
                                key.min_decryption, key.labels,
                                [d for d in key.digests() if d[0] != version])
            self._store.delete_version(name, version, row_mac=mac)
            with self._rw.write():
                del key.versions[version]
                if v.slot is not None:
                    v.slot.free()
            return key.info()

    def delete(self, name: str) -> None:
        """Remove every sealed record of the key, then zero every slot."""
        with self._mutate:
            self._require_open()
            key = self._get(name)
            self._store.delete_key(name)
            with self._rw.write():
                del self._keys[name]
                self._name_removed(name)
                for v in key.versions.values():
                    if v.slot is not None:
                        v.slot.free()

    # --- public keys ------------------------------------------------------------

    def public_key(self, name: str, version: int | None = None, fmt: str = "raw") -> bytes:
        with self._rw.read():
            key = self._get(name)
            n = key.primary if version is None else version
            v = key.versions.get(n)
            if (v is not None and v.damaged is not None and v.damaged != key.damaged
                    and key.type.asymmetric):
                # the version's own damage says more than the key's
                raise IntegrityError(f"key {name!r} version {n}: {v.damaged}")
            if key.damaged is not None:
                raise IntegrityError(f"key {name!r}: {key.damaged}")
            if v is None:
                raise VersionNotFound(f"key {name!r} has no version {n}")
            if v.damaged is not None and key.type.asymmetric:
                # the stored public key is not authenticated on its own: a
                # version that failed to unseal must not vouch for it
                raise IntegrityError(f"key {name!r} version {n}: {v.damaged}")
            return encode_public_key(
                key.type.value, v.public or b"", fmt, comment=f"{name}#v{n}", kid=f"{name}#v{n}"
            )

    # --- operations ---------------------------------------------------------------

    # Each operation holds the read side only while it reads the slot (a
    # delete zeroes it under the write side); framing the result needs only
    # the version number, so it happens after the release.

    def sign(self, name: str, message: bytes) -> tuple[int, bytes]:
        """(version, framed signature) with the primary version."""
        rw = self._rw
        rw.acquire_read()
        try:
            v = self._use(name, KeyType.ED25519, "sign")
            assert v.slot is not None
            sig = crypto.sign(v.slot, message)
        finally:
            rw.release_read()
        return v.version, framing.frame(Kind.SIGNATURE, v.version, sig)

    def verify(self, name: str, message: bytes, signature: bytes) -> bool:
        version, raw = framing.unframe(Kind.SIGNATURE, signature)
        rw = self._rw
        rw.acquire_read()
        try:
            v = self._use(name, KeyType.ED25519, "verify", version, True)
            assert v.public is not None
            public = v.public
        finally:
            rw.release_read()
        return crypto.verify(public, message, raw)

    def encrypt(self, name: str, plaintext: bytes, aad: bytes = b"") -> tuple[int, bytes]:
        rw = self._rw
        rw.acquire_read()
        try:
            v = self._use(name, KeyType.XCHACHA20_POLY1305, "encrypt")
            assert v.slot is not None
            payload = crypto.aead_encrypt(v.slot, plaintext, aad)
        finally:
            rw.release_read()
        return v.version, framing.frame(Kind.AEAD, v.version, payload)

    def decrypt(self, name: str, ciphertext: bytes, aad: bytes = b"") -> tuple[int, bytes]:
        """Decrypt an XChaCha20-Poly1305 ciphertext or an X25519 sealed box.

        The token's own kind picks the operation (not the stored key type,
        which a tampered store could change): a mismatch is a WrongKeyType,
        or an IntegrityError when that version failed to unseal.
        """
        rw = self._rw
        if ciphertext[:3] == _SEALED_BOX_MAGIC:
            version, box = framing.unframe(Kind.SEALED_BOX, ciphertext)
            if aad:
                raise InvalidArgument("sealed boxes take no associated data")
            rw.acquire_read()
            try:
                v = self._use(name, KeyType.X25519, "decrypt", version, True)
                assert v.slot is not None and v.public is not None
                return version, crypto.open_sealed_box(v.slot, v.public, box)
            finally:
                rw.release_read()
        version, payload = framing.unframe(Kind.AEAD, ciphertext)
        rw.acquire_read()
        try:
            v = self._use(name, KeyType.XCHACHA20_POLY1305, "decrypt", version, True)
            assert v.slot is not None
            if len(payload) < _AEAD_MIN:
                raise DecryptionFailed(
                    "the ciphertext is shorter than its 24-byte nonce and 16-byte tag")
            return version, crypto.aead_decrypt(v.slot, payload, aad)
        finally:
            rw.release_read()

    def mac(self, name: str, message: bytes) -> tuple[int, bytes]:
        rw = self._rw
        rw.acquire_read()
        try:
            v = self._use(name, KeyType.HMAC_SHA256, "mac")
            tag = self._hmac(v, message)
        finally:
            rw.release_read()
        return v.version, framing.frame(Kind.MAC, v.version, tag)

    def verify_mac(self, name: str, message: bytes, mac: bytes) -> bool:
        version, raw = framing.unframe(Kind.MAC, mac)
        rw = self._rw
        rw.acquire_read()
        try:
            v = self._use(name, KeyType.HMAC_SHA256, "verify_mac", version, True)
            tag = self._hmac(v, message)
        finally:
            rw.release_read()
        return crypto.constant_time_equal(tag, raw)

    def _hmac(self, v: _Version, message: bytes) -> bytes:
        assert v.slot is not None
        # the HMAC state holds the key's pads: it is secret scratch, pooled
        try:
            scratch = self._scratch.pop()
        except IndexError:
            scratch = self._alloc.allocate(na.HMACSHA256_STATEBYTES)
        try:
            return crypto.hmac_sha256(v.slot, v.length, scratch, message)
        finally:
            self._scratch.append(scratch)

    # --- teardown -------------------------------------------------------------

    def close(self) -> None:
        """Zero and free every slot (keys, import key, KEK, scratch)."""
        with self._mutate, self._rw.write():
            if self._closed:
                return
            self._closed = True
            for key in self._keys.values():
                for v in key.versions.values():
                    if v.slot is not None:
                        v.slot.free()
            self._keys.clear()
            if self._import_slot is not None:
                self._import_slot.free()
            while self._scratch:
                self._scratch.pop().free()
            self._row_key.close()
            self._kek.close()
