"""The agent's changes: ADD_IDENTITY (and constrained), REMOVE_IDENTITY, REMOVE_ALL, LOCK, UNLOCK.

Adding needs the policy's ``ssh_add_key`` grant and removing
``ssh_remove_key`` (keyless operations: they act on the identity's own agent
keys; the owner has both, every other identity neither unless granted).
The private key is read off the socket straight into a slot
(:meth:`SecretMessage.secret`), expanded into the key's own slot by
``crypto.expand_import`` (which derives the public key from the seed: it
must match the one sent), and the received copy zeroed.  By default the key
is held in memory only, as OpenSSH's agent holds it; with ``[ssh_agent]
persist = true`` in the policy it becomes a vault key, sealed and stored like
any other, named ``ssh-agent/IDENTITY/FINGERPRINT`` (a key with a lifetime
is never persisted).  A confirm constraint is refused: the vault has no
terminal or display to ask on.
"""

from __future__ import annotations

import time

from secretvault.api.errors import KeyNotFound, VaultError
from secretvault.backends import Slot, SlotAllocator
from secretvault.vault import crypto
from secretvault.vault.agent import keys, wire
from secretvault.vault.agent.held import AgentViews, HeldKey
from secretvault.vault.agent.record import Recorder
from secretvault.vault.agent.session import SecretMessage, Session
from secretvault.vault.agent.wire import Malformed
from secretvault.vault.crypto import KeyType
from secretvault.vault.keyring import Keyring
from secretvault.vault.policy import Policy

ADD_OPERATION = "ssh_add_key"
REMOVE_OPERATION = "ssh_remove_key"
#: where persisted agent keys live: ``ssh-agent/IDENTITY/FINGERPRINT``
PERSIST_PREFIX = "ssh-agent"
#: a wrong UNLOCK passphrase waits this long before its FAILURE (slows guessing)
UNLOCK_DELAY = 0.1
#: the longest lifetime constraint accepted: a year
MAX_LIFETIME = 365 * 86400


def persisted_name(identity: str, blob: bytes) -> str:
    return f"{PERSIST_PREFIX}/{identity}/{keys.storable_fingerprint(blob)}"


class Refused(Exception):
    """A request refused with a status (audited as its result)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class Changes:
    def __init__(self, keyring: Keyring, allocator: SlotAllocator, policy: Policy,
                 views: AgentViews, record: Recorder, *, persist: bool) -> None:
        self.keyring = keyring
        self.allocator = allocator
        self.policy = policy
        self.views = views
        self.record = record
        self.persist = persist

    # --- adding ---------------------------------------------------------------------

    def add(self, session: Session, msg: SecretMessage, *, constrained: bool) -> bytes:
        if not self.policy.allows(session.caller.identity, ADD_OPERATION, None):
            self.record.result(session, "ssh_add", None, "PERMISSION_DENIED")
            return wire.FAILURE_MESSAGE  # the session drains the key through a slot
        kind = msg.string(64)
        if kind != keys.ED25519:
            # RSA, ECDSA, security keys, certificates: not held here
            self.record.result(session, "ssh_add", None, "UNIMPLEMENTED")
            return wire.FAILURE_MESSAGE
        public = msg.string(64)
        if len(public) != keys.PUBLIC_BYTES:
            raise Malformed("an Ed25519 public key is 32 bytes")
        slot = self._receive(msg, public)
        try:
            comment = msg.string()
            lifetime = self._constraints(msg) if constrained else None
            if msg.remaining:
                raise Malformed("bytes after the last field")
        except Refused as e:
            slot.free()
            self.record.result(session, "ssh_add", keys.fingerprint(keys.key_blob(public)),
                               e.status)
            return wire.FAILURE_MESSAGE
        except BaseException:
            slot.free()
            raise
        return self._hold(session, HeldKey(public, comment, slot), lifetime)

    def _receive(self, msg: SecretMessage, public: bytes) -> Slot:
        """The private key off the socket, expanded into a slot of its own."""
        received, n = msg.secret()
        try:
            if n != keys.PRIVATE_BYTES:
                raise Malformed("an Ed25519 private key is 64 bytes")
            slot = self.allocator.allocate(keys.PRIVATE_BYTES)
            try:
                derived = crypto.expand_import(KeyType.ED25519, received, keys.PUBLIC_BYTES,
                                               slot)
                if derived != public:
                    raise Malformed("the private key does not match its public key")
            except BaseException:
                slot.free()
                raise
        finally:
            received.free()
        return slot

    def _constraints(self, msg: SecretMessage) -> float | None:
        lifetime: float | None = None
        while msg.remaining:
            c = msg.byte()
            if c == wire.CONSTRAIN_LIFETIME:
                lifetime = float(msg.u32())
                if not 0 < lifetime <= MAX_LIFETIME:
                    raise Refused("INVALID_ARGUMENT")
            elif c == wire.CONSTRAIN_CONFIRM:
                raise Refused("FAILED_PRECONDITION")  # nobody to ask
            else:
                # maxsign (XMSS), destination restrictions, providers: not offered
                raise Refused("UNIMPLEMENTED")
        return lifetime

    def _hold(self, session: Session, key: HeldKey, lifetime: float | None) -> bytes:
        """Keep ``key`` (its slot is consumed: kept, or freed)."""
        identity = session.caller.identity
        if self.persist and lifetime is None:
            return self._persist(session, key)
        fp = key.fingerprint
        if not self.record.attempt(session, "ssh_add", fp):
            key.slot.free()
            return wire.FAILURE_MESSAGE
        status = ""
        try:
            with self.views.view(identity) as view:
                if view.locked or view.full(key.public):
                    status = "FAILED_PRECONDITION" if view.locked else "RESOURCE_EXHAUSTED"
                    key.slot.free()
                else:
                    if lifetime is not None:
                        key.expires = time.monotonic() + lifetime
                    view.add(key)
                    status = "ok"
        except BaseException:  # the agent stopping (StoreSealed): the slot is still ours
            if status != "ok" and not key.slot.freed:
                key.slot.free()
            raise
        self.record.result(session, "ssh_add", fp, status)
        return wire.SUCCESS_MESSAGE if status == "ok" else wire.FAILURE_MESSAGE

    def _persist(self, session: Session, key: HeldKey) -> bytes:
        name = persisted_name(session.caller.identity, key.blob)
        if not self.record.attempt(session, "ssh_add", name):
            key.slot.free()
            return wire.FAILURE_MESSAGE
        try:
            with self.views.view(session.caller.identity) as view:
                locked = view.locked
            if locked:
                raise Refused("FAILED_PRECONDITION")
            comment = key.comment.decode("utf-8", "replace")[:64]
            self.keyring.adopt(name, key.slot, key.public, {"ssh-comment": comment},
                               by=session.caller.identity)
        except (VaultError, Refused) as e:
            self.record.result(session, "ssh_add", name, e.status)
            return wire.FAILURE_MESSAGE
        finally:
            # the keyring expanded the seed into a slot of its own
            key.slot.free()
        self.record.result(session, "ssh_add", name, "ok", version=1)
        return wire.SUCCESS_MESSAGE

    # --- removing -------------------------------------------------------------------

    def _may_remove(self, session: Session, operation: str) -> bool:
        if self.policy.allows(session.caller.identity, REMOVE_OPERATION, None):
            return True
        self.record.result(session, operation, None, "PERMISSION_DENIED")
        return False

    def remove(self, session: Session, blob: bytes) -> bytes:
        public = keys.public_of(blob)
        if not self._may_remove(session, "ssh_remove"):
            return wire.FAILURE_MESSAGE
        fp = keys.fingerprint(blob)
        if not self.record.attempt(session, "ssh_remove", fp):
            return wire.FAILURE_MESSAGE
        with self.views.view(session.caller.identity) as view:
            if view.locked:
                self.record.result(session, "ssh_remove", fp, "FAILED_PRECONDITION")
                return wire.FAILURE_MESSAGE
            gone = view.remove(public)
        if gone is not None:
            self.record.result(session, "ssh_remove", fp, "ok")
            return wire.SUCCESS_MESSAGE
        # a persisted agent key of this identity; never any other vault key
        name = persisted_name(session.caller.identity, blob)
        try:
            self.keyring.delete(name)
        except VaultError as e:
            status = "NOT_FOUND" if isinstance(e, KeyNotFound) else e.status
            self.record.result(session, "ssh_remove", fp, status)
            return wire.FAILURE_MESSAGE
        self.record.result(session, "ssh_remove", name, "ok")
        return wire.SUCCESS_MESSAGE

    def remove_all(self, session: Session) -> bytes:
        if not self._may_remove(session, "ssh_remove_all"):
            return wire.FAILURE_MESSAGE
        if not self.record.attempt(session, "ssh_remove_all", None):
            return wire.FAILURE_MESSAGE
        with self.views.view(session.caller.identity) as view:
            if view.locked:
                self.record.result(session, "ssh_remove_all", None, "FAILED_PRECONDITION")
                return wire.FAILURE_MESSAGE
            gone = view.remove_all()
        for key in gone:
            self.record.result(session, "ssh_remove", key.fingerprint, "ok")
        for info in self.keyring.list(f"{PERSIST_PREFIX}/{session.caller.identity}/"):
            try:
                self.keyring.delete(info.name)
                self.record.result(session, "ssh_remove", info.name, "ok")
            except VaultError as e:
                self.record.result(session, "ssh_remove", info.name, e.status)
        self.record.result(session, "ssh_remove_all", None, "ok")
        return wire.SUCCESS_MESSAGE

    # --- the lock --------------------------------------------------------------------

    def lock(self, session: Session, msg: SecretMessage, lock: bool) -> bytes:
        operation = "ssh_lock" if lock else "ssh_unlock"
        passphrase, n = msg.secret()
        try:
            if msg.remaining:
                raise Malformed("bytes after the passphrase")
            with self.views.view(session.caller.identity) as view:
                guessed = not lock and view.locked
                ok = view.lock_with(passphrase, n) if lock else view.unlock_with(passphrase, n)
        finally:
            passphrase.free()
        if guessed and not ok:  # a wrong passphrase for a locked agent
            time.sleep(UNLOCK_DELAY)
        self.record.result(session, operation, None, "ok" if ok else "FAILED_PRECONDITION")
        return wire.SUCCESS_MESSAGE if ok else wire.FAILURE_MESSAGE
