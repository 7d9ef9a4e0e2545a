"""One agent connection: frames read straight off the socket, secrets into secret memory.

Reads are exact (``recv`` of the bytes a field needs, never more): a
buffered reader would pull the next message's bytes, a private key among
them, into ordinary memory.  A message that carries a secret (ADD_IDENTITY,
ADD_ID_CONSTRAINED, LOCK, UNLOCK) is read field by field: its public fields
into ``bytes``, its secret with ``crypto.recv_into`` straight into a slot.
Whatever of it is left unparsed (a refusal, a malformed field) is drained
through a slot too, so the stream stays in step and nothing secret lands in
Python memory.

The connection closes when the stream can no longer be trusted: a length of
0 or over :data:`~secretvault.vault.agent.wire.MAX_MESSAGE` (answered with
SSH_AGENT_FAILURE first), a peer that closes mid-message, or a read that
waits longer than the idle timeout.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from secretvault.backends import Slot, SlotAllocator
from secretvault.vault import crypto
from secretvault.vault.agent import wire
from secretvault.vault.agent.wire import Malformed

#: the most bytes one secret field may hold: one slot
MAX_SECRET = 256
#: the most bytes a public field of a secret-bearing message may hold
#: (a key type, a public key, a comment, a constraint's name)
MAX_PUBLIC_FIELD = 4096
_U32 = struct.Struct(">I")


class Closed(Exception):
    """The peer closed the connection, or it timed out: stop serving it."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; :class:`Closed` when the peer closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise Closed
        got += k
    return bytes(buf)


class SecretMessage:
    """The contents of one secret-bearing message, read off the socket field by field."""

    def __init__(self, sock: socket.socket, length: int, allocator: SlotAllocator) -> None:
        self._sock = sock
        self.remaining = length
        self._alloc = allocator

    def _take(self, n: int) -> None:
        if n > self.remaining:
            raise Malformed("a field runs past the end of the message")
        self.remaining -= n

    def public(self, n: int) -> bytes:
        self._take(n)
        return recv_exact(self._sock, n)

    def byte(self) -> int:
        return self.public(1)[0]

    def u32(self) -> int:
        return int(_U32.unpack(self.public(4))[0])

    def string(self, limit: int = MAX_PUBLIC_FIELD) -> bytes:
        n = self.u32()
        if n > limit:
            raise Malformed(f"a field of {n} bytes, over the {limit} this message allows")
        return self.public(n)

    def secret(self) -> tuple[Slot, int]:
        """A ``string`` holding a secret: (its slot, its length).  The caller frees the slot."""
        n = self.u32()
        if n > MAX_SECRET:
            raise Malformed(f"a secret of {n} bytes, over the {MAX_SECRET} accepted")
        self._take(n)
        slot = self._alloc.allocate(max(n, 1))
        try:
            if not crypto.recv_into(self._sock, slot, n):
                raise Closed
        except BaseException:
            slot.free()
            raise
        return slot, n

    def drain(self) -> None:
        """Read whatever is left of the message through a slot, then zero it."""
        if self.remaining <= 0:
            return
        with self._alloc.allocate(MAX_SECRET) as sink:
            while self.remaining > 0:
                n = min(self.remaining, MAX_SECRET)
                if not crypto.recv_into(self._sock, sink, n):
                    raise Closed
                self.remaining -= n


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is on a connection: the listener's identity, and the listener."""

    identity: str
    listener: str


@dataclass(slots=True)
class SessionBind:
    """A ``session-bind@openssh.com`` the client sent: the host it is talking to."""

    host_key: str  # fingerprint
    session_id: str  # hex
    forwarding: bool
    verified: bool


#: session-binds one connection may record (OpenSSH's AGENT_MAX_SESSION_IDS)
MAX_SESSION_BINDS = 16


@dataclass(slots=True)
class Session:
    """One connection's state."""

    caller: Caller
    binds: list[SessionBind] = field(default_factory=list)


def read_message(sock: socket.socket) -> tuple[int, int] | None:
    """The next message's (contents length, type); None at a clean end of stream.

    :class:`Malformed` for a length the protocol forbids (the caller answers
    FAILURE, then closes: the stream is out of step); :class:`Closed` when
    the peer closes inside the header.
    """
    first = sock.recv(4)
    if not first:
        return None
    if len(first) < 4:
        first += recv_exact(sock, 4 - len(first))
    (length,) = _U32.unpack(first)
    if not 1 <= length <= wire.MAX_MESSAGE:
        raise Malformed(f"a message of {length} bytes (1 to {wire.MAX_MESSAGE} allowed)")
    return length - 1, recv_exact(sock, 1)[0]
