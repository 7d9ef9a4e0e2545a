"""Keys added with ``ssh-add``, and the lock: one agent view per identity.

Each identity that reaches the agent (through its own agent socket) has a
view of its own, as if it ran its own ``ssh-agent``: the keys it added, and
whether it locked them.  A held key's private half is a slot of secret
memory, filled from the socket by the session and expanded by
``crypto.expand_import``; removing it, its lifetime running out, or closing
the vault zeroes the slot.  Every change and every signature happens under
the view's lock, so a removal never races a signature on the same slot.

The lock passphrase is never kept: locking keeps ``HMAC-SHA-256(key =
passphrase, message = a random salt)`` in secret memory, and unlocking
compares the candidate's tag with it in constant time (``crypto.slots_equal``),
so neither the passphrase nor its length is compared byte by byte.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from secretvault.api.errors import StoreSealed
from secretvault.backends import Slot, SlotAllocator
from secretvault.vault import crypto
from secretvault.vault.agent.keys import fingerprint, key_blob

#: the lock's tag (HMAC-SHA-256) and the salt it is computed over
_TAG_BYTES = crypto.MAC_BYTES
_SALT_BYTES = 32


@dataclass(eq=False, slots=True)
class HeldKey:
    public: bytes
    comment: bytes
    slot: Slot
    #: ``time.monotonic()`` after which the key is gone (None: no lifetime)
    expires: float | None = None

    @property
    def blob(self) -> bytes:
        return key_blob(self.public)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


class AgentView:
    """One identity's held keys and lock state."""

    def __init__(self, allocator: SlotAllocator, max_keys: int) -> None:
        self._alloc = allocator
        self.max_keys = max_keys
        self.lock = threading.Lock()
        self._keys: dict[bytes, HeldKey] = {}
        self._tag: Slot | None = None
        self._salt = b""

    # --- keys (callers hold ``lock``) -----------------------------------------------

    def keys(self, now: float) -> list[HeldKey]:
        self.expire(now)
        return list(self._keys.values())

    def find(self, public: bytes, now: float) -> HeldKey | None:
        key = self._keys.get(public)
        if key is not None and key.expires is not None and now >= key.expires:
            self.expire(now)
            return None
        return key

    def full(self, public: bytes) -> bool:
        return public not in self._keys and len(self._keys) >= self.max_keys

    def add(self, key: HeldKey) -> None:
        """Hold ``key``; one already held with the same public key is replaced (zeroed)."""
        old = self._keys.pop(key.public, None)
        self._keys[key.public] = key
        if old is not None:
            old.slot.free()

    def remove(self, public: bytes) -> HeldKey | None:
        key = self._keys.pop(public, None)
        if key is not None:
            key.slot.free()
        return key

    def remove_all(self) -> list[HeldKey]:
        gone = list(self._keys.values())
        self._keys.clear()
        for key in gone:
            key.slot.free()
        return gone

    def expire(self, now: float) -> list[HeldKey]:
        """Zero and drop every key whose lifetime has run out; those keys."""
        gone = [k for k in self._keys.values() if k.expires is not None and now >= k.expires]
        for key in gone:
            del self._keys[key.public]
            key.slot.free()
        return gone

    # --- the lock ----------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        return self._tag is not None

    def _tag_of(self, passphrase: Slot, length: int) -> Slot:
        tag = self._alloc.allocate(_TAG_BYTES)
        try:
            with self._alloc.allocate(crypto.HMAC_STATE_BYTES) as scratch:
                crypto.hmac_sha256_into(tag, passphrase, length, scratch, self._salt)
        except BaseException:
            tag.free()
            raise
        return tag

    def lock_with(self, passphrase: Slot, length: int) -> bool:
        """Lock with the passphrase in ``passphrase`` (False: already locked)."""
        if self._tag is not None:
            return False
        self._salt = crypto.random_bytes(_SALT_BYTES)
        self._tag = self._tag_of(passphrase, length)
        return True

    def unlock_with(self, passphrase: Slot, length: int) -> bool:
        """Unlock if the passphrase matches the one locked with (False: it does not)."""
        if self._tag is None:
            return False
        candidate = self._tag_of(passphrase, length)
        try:
            if not crypto.slots_equal(candidate, self._tag, _TAG_BYTES):
                return False
        finally:
            candidate.free()
        self._tag.free()
        self._tag = None
        return True

    def close(self) -> None:
        with self.lock:
            self.remove_all()
            if self._tag is not None:
                self._tag.free()
                self._tag = None


class AgentViews:
    """Every identity's view, made on first use; :meth:`close` zeroes them all."""

    def __init__(self, allocator: SlotAllocator, max_keys: int) -> None:
        self._alloc = allocator
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._views: dict[str, AgentView] = {}
        self.closed = False

    @contextmanager
    def view(self, identity: str) -> Iterator[AgentView]:
        """``identity``'s view, its lock held; :class:`StoreSealed` once closed (a
        connection still finishing then gets FAILURE, and nothing new is held)."""
        with self._lock:
            if self.closed:
                raise StoreSealed("the SSH agent is stopped")
            v = self._views.get(identity)
            if v is None:
                v = self._views[identity] = AgentView(self._alloc, self._max_keys)
        with v.lock:
            yield v

    def sweep(self) -> list[tuple[str, HeldKey]]:
        """Zero every key past its lifetime, in every view: (identity, key) of each."""
        now = time.monotonic()
        with self._lock:
            views = list(self._views.items())
        out: list[tuple[str, HeldKey]] = []
        for identity, v in views:
            with v.lock:
                out.extend((identity, k) for k in v.expire(now))
        return out

    def counts(self) -> dict[str, int]:
        with self._lock:
            views = list(self._views.items())
        out: dict[str, int] = {}
        for identity, v in views:
            with v.lock:
                out[identity] = len(v.keys(time.monotonic()))
        return out

    def close(self) -> None:
        with self._lock:
            self.closed = True
            views = list(self._views.values())
        for v in views:
            v.close()
