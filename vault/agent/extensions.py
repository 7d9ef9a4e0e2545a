"""``SSH_AGENTC_EXTENSION`` messages: ``session-bind@openssh.com``, and the rest refused.

OpenSSH's ``ssh`` (8.9 and later) sends ``session-bind@openssh.com`` before
it asks for a signature: ``string hostkey, string session identifier, string
signature, bool is_forwarding``, where the signature is the host key's over
the session identifier (PROTOCOL.agent).  The agent records it, so its audit
line ties the signatures that follow on the connection to the host they
were for.  An Ed25519 host key's signature is checked (a bad one is
refused); other host key types are recorded as unverified.
"""

from __future__ import annotations

from secretvault.vault import crypto
from secretvault.vault.agent import keys, wire
from secretvault.vault.agent.session import SessionBind
from secretvault.vault.agent.wire import Malformed, Reader

#: the longest session identifier accepted (SSH's is a hash: 32 to 64 bytes)
MAX_SESSION_ID = 128


class BadBind(Exception):
    """A session-bind whose host key did not sign its session id."""


def session_bind(r: Reader) -> SessionBind:
    """The session-bind in the rest of ``r``.

    :class:`Malformed` when it does not parse, :class:`BadBind` when an
    Ed25519 host key's signature does not verify.
    """
    host_key = r.string()
    session_id = r.string()
    signature = r.string()
    forwarding = r.byte()
    r.end()
    if len(session_id) > MAX_SESSION_ID or forwarding > 1:
        raise Malformed(f"a session id of at most {MAX_SESSION_ID} bytes, then a boolean")
    verified = _verify(host_key, session_id, signature)
    if verified is False:
        raise BadBind("the host key did not sign this session id")
    return SessionBind(keys.fingerprint(host_key), session_id.hex(), bool(forwarding),
                       verified is True)


def _verify(host_key: bytes, session_id: bytes, signature: bytes) -> bool | None:
    """Whether the host key signed the session id (None: not an Ed25519 host key)."""
    try:
        public = keys.public_of(host_key)
    except Malformed:
        return None
    r = Reader(signature)
    try:
        if r.string() != keys.ED25519:
            return False
        raw = r.string()
        r.end()
    except Malformed:
        return False
    return len(raw) == keys.SIGNATURE_BYTES and crypto.verify(public, session_id, raw)


def is_session_bind(name: bytes) -> bool:
    return name == wire.SESSION_BIND
