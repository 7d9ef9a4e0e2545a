"""The agent's request dispatcher: one reply per message, policy and audit on each.

What a message may do depends on the socket's identity, as for gRPC:

* REQUEST_IDENTITIES lists the vault's Ed25519 keys the identity may
  ``sign`` with (their vault name is the comment) and the keys it added;
* SIGN_REQUEST signs with one of those, in place in secret memory;
* ADD_IDENTITY / ADD_ID_CONSTRAINED need the ``ssh_add_key`` grant, and
  REMOVE_IDENTITY / REMOVE_ALL_IDENTITIES ``ssh_remove_key`` (the owner has
  both); they act on the keys the identity added, never on other vault keys;
* LOCK / UNLOCK lock the identity's own view;
* the ``session-bind@openssh.com`` extension is parsed, its signature
  checked when the host key is Ed25519, and recorded in the audit line.

Anything else, and anything malformed, is SSH_AGENT_FAILURE.  Every sign and
every change has an audit line (identity, key, result) and a count in the
stats and metrics; a change is refused when its ``attempt`` line cannot be
written, and a signature is withheld when its line cannot be.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from secretvault.api.errors import VaultError
from secretvault.api.framing import HEADER_SIZE
from secretvault.backends import SlotAllocator
from secretvault.vault import crypto
from secretvault.vault.agent import extensions, keys, wire
from secretvault.vault.agent.changes import PERSIST_PREFIX, Changes
from secretvault.vault.agent.held import AgentViews
from secretvault.vault.agent.record import Recorder
from secretvault.vault.agent.session import MAX_SESSION_BINDS, SecretMessage, Session
from secretvault.vault.agent.wire import Malformed, Reader
from secretvault.vault.audit import AuditLog
from secretvault.vault.crypto import KeyType
from secretvault.vault.keyring import Keyring
from secretvault.vault.policy import Policy
from secretvault.vault.stats import OperationCounters

_ED25519 = KeyType.ED25519
#: a signature request for a public key not in the index rescans the keyring at
#: most this often (a listing always does)
REFRESH_SECONDS = 1.0


class AgentService:
    """Answers agent messages for every agent listener of one vault."""

    def __init__(self, keyring: Keyring, allocator: SlotAllocator, policy: Policy,
                 audit: AuditLog, counters: OperationCounters, *, persist: bool,
                 max_keys: int, observe: Callable[[str, float], None] | None = None) -> None:
        self.keyring = keyring
        self.allocator = allocator
        self.policy = policy
        self.record = Recorder(audit, counters)
        self.views = AgentViews(allocator, max_keys)
        self.changes = Changes(keyring, allocator, policy, self.views, self.record,
                               persist=persist)
        self._observe = observe
        #: vault keys by public key: (name, primary version when last seen)
        self._index: dict[bytes, tuple[str, int]] = {}
        self._refreshed = 0.0

    # --- dispatch -----------------------------------------------------------------------

    def handle(self, session: Session, kind: int, body: bytes) -> bytes:
        """The reply to a message whose contents carry no secret."""
        try:
            if kind == wire.SIGN_REQUEST:
                return self._sign(session, Reader(body))
            if kind == wire.REQUEST_IDENTITIES:
                Reader(body).end()
                return self._identities(session)
            if kind == wire.REMOVE_IDENTITY:
                r = Reader(body)
                blob = r.string()
                r.end()
                return self.changes.remove(session, blob)
            if kind == wire.REMOVE_ALL_IDENTITIES:
                Reader(body).end()
                return self.changes.remove_all(session)
            if kind == wire.EXTENSION:
                return self._extension(session, Reader(body))
            self.record.count("ssh_unknown_message", "INVALID_ARGUMENT")
            return wire.FAILURE_MESSAGE
        except Malformed:
            self.record.count("ssh_malformed", "INVALID_ARGUMENT")
            return wire.FAILURE_MESSAGE

    def handle_secret(self, session: Session, kind: int, msg: SecretMessage) -> bytes:
        """The reply to ADD_IDENTITY, ADD_ID_CONSTRAINED, LOCK or UNLOCK."""
        try:
            if kind in (wire.ADD_SMARTCARD_KEY, wire.ADD_SMARTCARD_KEY_CONSTRAINED):
                self.record.count("ssh_add_smartcard", "UNIMPLEMENTED")
                return wire.FAILURE_MESSAGE  # its PIN is drained through a slot
            if kind in (wire.LOCK, wire.UNLOCK):
                return self.changes.lock(session, msg, kind == wire.LOCK)
            return self.changes.add(session, msg, constrained=kind == wire.ADD_ID_CONSTRAINED)
        except Malformed:
            self.record.count("ssh_malformed", "INVALID_ARGUMENT")
            return wire.FAILURE_MESSAGE

    # --- identities -------------------------------------------------------------------

    def _usable(self, identity: str, name: str) -> bool:
        """Whether ``identity`` may sign with the vault key ``name`` (its own
        persisted agent keys, or what the policy grants)."""
        return (self.policy.allows(identity, "sign", name)
                or name.startswith(f"{PERSIST_PREFIX}/{identity}/"))

    def _refresh(self) -> list[tuple[str, bytes]]:
        """(name, primary public key) of every intact Ed25519 vault key, indexed."""
        self._refreshed = time.monotonic()
        out = []
        for info in self.keyring.list():
            if info.type is not _ED25519 or info.damaged:
                continue
            for v in info.versions:
                if v.version == info.primary_version and v.public_key and not v.damaged:
                    out.append((info.name, v.public_key))
                    self._index[v.public_key] = (info.name, v.version)
        return out

    def _vault_keys(self, identity: str) -> list[tuple[str, bytes]]:
        """(name, public key) of every Ed25519 vault key ``identity`` may sign with."""
        return [(name, pk) for name, pk in self._refresh() if self._usable(identity, name)]

    def _identities(self, session: Session) -> bytes:
        identity = session.caller.identity
        with self.views.view(identity) as view:
            if view.locked:  # as OpenSSH's agent: a locked agent has no identities
                self.record.count("ssh_list", "FAILED_PRECONDITION")
                return wire.message(wire.IDENTITIES_ANSWER, wire.u32(0))
            held = [(k.blob, k.comment) for k in view.keys(time.monotonic())]
        entries = [(keys.key_blob(pk), name.encode()) for name, pk in self._vault_keys(identity)]
        listed = {blob for blob, _ in entries}
        entries += [h for h in held if h[0] not in listed]
        self.record.count("ssh_list", "ok")
        body = b"".join(wire.string(blob) + wire.string(comment) for blob, comment in entries)
        return wire.message(wire.IDENTITIES_ANSWER, wire.u32(len(entries)) + body)

    # --- signatures -------------------------------------------------------------------

    def _sign(self, session: Session, r: Reader) -> bytes:
        start = time.perf_counter()
        blob = r.string()
        data = r.string()
        r.u32()  # flags: RSA's hash choices; nothing for Ed25519
        r.end()
        public = keys.public_of(blob)
        with self.views.view(session.caller.identity) as view:
            if view.locked:
                self.record.result(session, "ssh_sign", keys.fingerprint(blob),
                                   "FAILED_PRECONDITION")
                return wire.FAILURE_MESSAGE
            held = view.find(public, time.monotonic())
            # under the view's lock: a removal cannot zero the slot meanwhile
            signature = crypto.sign(held.slot, data) if held is not None else None
        key: str | None
        if held is not None and signature is not None:
            key, version = held.fingerprint, None
        else:
            key, version, outcome = self._sign_vault(session.caller.identity, public, data)
            if isinstance(outcome, str):
                self.record.result(session, "ssh_sign", key or keys.fingerprint(blob), outcome)
                return wire.FAILURE_MESSAGE
            signature = outcome
        try:
            self.record.done(session, "ssh_sign", key, version, "ok")
        except VaultError:
            return wire.FAILURE_MESSAGE  # withheld: it could not be audited
        if self._observe is not None:
            self._observe("ssh_sign", time.perf_counter() - start)
        return wire.message(wire.SIGN_RESPONSE, wire.string(keys.signature_blob(signature)))

    def _sign_vault(self, identity: str, public: bytes,
                    data: bytes) -> tuple[str | None, int | None, bytes | str]:
        """(name, version, signature) with the vault key whose public key is
        ``public``, or (its name or None, None, the refusal's status)."""
        found = self._index.get(public)
        if found is None:
            # a key made since the last listing (ssh lists before it signs).  At most
            # one scan a second: requests for keys that do not exist cannot make every
            # request a scan of the whole keyring
            if time.monotonic() - self._refreshed >= REFRESH_SECONDS:
                self._refresh()
            found = self._index.get(public)
            if found is None:
                return None, None, "NOT_FOUND"
        name, version = found
        if not self._usable(identity, name):
            return name, None, "PERMISSION_DENIED"
        try:
            signed, framed = self.keyring.sign(name, data)
        except VaultError as e:
            self._index.pop(public, None)
            return name, None, e.status
        if signed != version:
            # rotated since it was listed: only the listed key's signature will do
            self._index.pop(public, None)
            self._refresh()
            if self._index.get(public) != (name, signed):
                return name, None, "NOT_FOUND"
        return name, signed, framed[HEADER_SIZE:]

    # --- extensions -------------------------------------------------------------------

    def _extension(self, session: Session, r: Reader) -> bytes:
        if not extensions.is_session_bind(r.string()):
            self.record.count("ssh_extension", "UNIMPLEMENTED")
            return wire.FAILURE_MESSAGE
        try:
            bind = extensions.session_bind(r)
        except Malformed:
            self.record.count("ssh_session_bind", "INVALID_ARGUMENT")
            return wire.EXTENSION_FAILURE_MESSAGE
        except extensions.BadBind:
            self.record.count("ssh_session_bind", "UNAUTHENTICATED")
            return wire.EXTENSION_FAILURE_MESSAGE
        if len(session.binds) >= MAX_SESSION_BINDS:
            self.record.count("ssh_session_bind", "RESOURCE_EXHAUSTED")
            return wire.EXTENSION_FAILURE_MESSAGE
        session.binds.append(bind)
        if not self.record.detail(session, "ssh_session_bind", "ok", {
                "host_key": bind.host_key, "session_id": bind.session_id,
                "forwarding": str(bind.forwarding).lower(),
                "verified": str(bind.verified).lower()}):
            return wire.EXTENSION_FAILURE_MESSAGE
        return wire.SUCCESS_MESSAGE

    # --- upkeep -------------------------------------------------------------------------

    def sweep(self, listener: str) -> None:
        """Zero the keys whose lifetime ran out, each with its audit line."""
        for identity, key in self.views.sweep():
            self.record.system(identity, listener, "ssh_expire", key.fingerprint)

    def close(self) -> None:
        """Zero every held key and lock tag."""
        self.views.close()
