"""The agent protocol's wire format (draft-miller-ssh-agent; OpenSSH's PROTOCOL.agent).

Every message is ``uint32 length || byte type || contents``; a ``string`` is
``uint32 length || bytes``.  OpenSSH's agent refuses a message over 256 KiB
(``AGENT_MAX_LEN``), and so does this one.  Only public fields are parsed
here, from ``bytes``: a message that carries a secret (a private key, a lock
passphrase) is read field by field off the socket by
:mod:`~secretvault.vault.agent.session`, its secret straight into a slot.
"""

from __future__ import annotations

import struct

#: OpenSSH's cap on one message (authfd.c, ssh-agent.c: AGENT_MAX_LEN)
MAX_MESSAGE = 256 * 1024

# replies
FAILURE = 5
SUCCESS = 6
IDENTITIES_ANSWER = 12
SIGN_RESPONSE = 14
EXTENSION_FAILURE = 28
# requests
REQUEST_IDENTITIES = 11
SIGN_REQUEST = 13
ADD_IDENTITY = 17
REMOVE_IDENTITY = 18
REMOVE_ALL_IDENTITIES = 19
ADD_SMARTCARD_KEY = 20
REMOVE_SMARTCARD_KEY = 21
LOCK = 22
UNLOCK = 23
ADD_ID_CONSTRAINED = 25
ADD_SMARTCARD_KEY_CONSTRAINED = 26
EXTENSION = 27
#: messages whose contents hold a secret: read off the socket into secret memory
#: (a smartcard key's PIN too: those messages are drained through a slot and refused)
SECRET_BEARING = frozenset({ADD_IDENTITY, ADD_ID_CONSTRAINED, LOCK, UNLOCK,
                            ADD_SMARTCARD_KEY, ADD_SMARTCARD_KEY_CONSTRAINED})

# key constraints (ADD_ID_CONSTRAINED)
CONSTRAIN_LIFETIME = 1
CONSTRAIN_CONFIRM = 2
CONSTRAIN_MAXSIGN = 3
CONSTRAIN_EXTENSION = 255

SESSION_BIND = b"session-bind@openssh.com"

_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">IB")


class Malformed(Exception):
    """A message that does not parse: answered with SSH_AGENT_FAILURE."""


def u32(n: int) -> bytes:
    return _U32.pack(n)


def string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def message(kind: int, contents: bytes = b"") -> bytes:
    """One framed message: length, type, contents."""
    return _HEADER.pack(len(contents) + 1, kind) + contents


FAILURE_MESSAGE = message(FAILURE)
SUCCESS_MESSAGE = message(SUCCESS)
EXTENSION_FAILURE_MESSAGE = message(EXTENSION_FAILURE)


def header(data: bytes) -> tuple[int, int]:
    """(length, type) of a message's first five bytes."""
    length, kind = _HEADER.unpack(data)
    return length, kind


class Reader:
    """Public fields, in order, out of one message's contents."""

    __slots__ = ("_data", "_off")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._off = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._off

    def u32(self) -> int:
        if self._off + 4 > len(self._data):
            raise Malformed("truncated uint32")
        (n,) = _U32.unpack_from(self._data, self._off)
        self._off += 4
        return int(n)

    def byte(self) -> int:
        if self._off >= len(self._data):
            raise Malformed("truncated byte")
        b = self._data[self._off]
        self._off += 1
        return b

    def string(self) -> bytes:
        n = self.u32()
        end = self._off + n
        if end > len(self._data):
            raise Malformed("a string runs past the end of the message")
        out = self._data[self._off:end]
        self._off = end
        return out

    def end(self) -> None:
        """Nothing may follow the last field."""
        if self._off != len(self._data):
            raise Malformed(f"{len(self._data) - self._off} bytes after the last field")
