"""The keyring: named keys with versions, served from secret memory.

The changes (create, import, rotate, delete) and how they meet other
processes' through the store's change feed are
:mod:`secretvault.vault.keyring_changes`; applying the feed is
:mod:`secretvault.vault.feed`.  Opening a store and unsealing every version
into a slot is :mod:`secretvault.vault.unsealing`; the records themselves are
:mod:`secretvault.vault.keys`.

Locking: ``_mutate`` serialises mutations and the feed's follower (so a name
is created once and versions are numbered without gaps); ``_rw`` lets any
number of operations read slots while a mutation publishes or frees them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from secretvault.api import framing
from secretvault.api.errors import (
    InvalidArgument,
    StoreSealed,
    WrongKeyType,
)
from secretvault.api.framing import Kind
from secretvault.api.pubkeys import encode_public_key
from secretvault.backends import SlotAllocator
from secretvault.vault import crypto
from secretvault.vault._rwlock import RWLock
from secretvault.vault.crypto import KeyType
from secretvault.vault.feed import Applier
from secretvault.vault.keyring_changes import KeyChanges
from secretvault.vault.keys import KeyInfo, Version
from secretvault.vault.listing import NameIndex
from secretvault.vault.quotas import Quotas
from secretvault.vault.scratch import HmacStates
from secretvault.vault.sealing import Argon2Params, UnsealSource
from secretvault.vault.store_protocol import Store
from secretvault.vault.unsealing import Progress, Unsealed, unseal

_SEALED_BOX_MAGIC = framing.MAGIC + Kind.SEALED_BOX.value
# An enum member lookup (``KeyType.ED25519``) costs about 50 ns on 3.11, as
# much as the rest of an operation's lock handling: the operations use these.
_ED25519, _X25519 = KeyType.ED25519, KeyType.X25519
_XCHACHA, _HMAC = KeyType.XCHACHA20_POLY1305, KeyType.HMAC_SHA256

#: one page of a listing: the keys, and whether more follow
Page = tuple[list[KeyInfo], bool]


class Keyring(KeyChanges):
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
        #: applies the store's feed (the changes of other processes) to this keyring
        self._applier = Applier(allocator, store, unsealed, self._names, self.quotas, self._rw)
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

    @property
    def applier(self) -> Applier:
        """What applies the store's change feed here (its follower's, and stats')."""
        return self._applier

    # --- lookups --------------------------------------------------------------

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

    def damaged_keys(self) -> dict[str, str]:
        """Keys that cannot be used in full, each with its first damage."""
        with self._reading:
            return {name: why for name, k in sorted(self._keys.items())
                    if (why := k.first_damage()) is not None}

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

    def sign_each(self, name: str, messages: Sequence[bytes]) -> tuple[int, Sequence[bytes]]:
        """(version, framed signature of each message), all with the primary version
        under one hold of the read side (a batch's run of signs with one key: a
        rotation waits for the run, never splits it)."""
        with self._reading:
            v = self._use(name, _ED25519, "sign")
            assert v.slot is not None
            sigs = crypto.sign_each(v.slot, messages)
        header = framing.frame(Kind.SIGNATURE, v.version, b"")
        return v.version, [header + sig for sig in sigs]

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
