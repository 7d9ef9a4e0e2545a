"""The agent wire format: framing, and public fields parsed strictly."""

from __future__ import annotations

import pytest

from secretvault.vault.agent import wire
from secretvault.vault.agent.wire import Malformed, Reader


def test_a_message_is_length_type_contents() -> None:
    assert wire.message(wire.SUCCESS) == b"\0\0\0\x01\x06"
    assert wire.message(12, b"ab") == b"\0\0\0\x03\x0cab"
    assert wire.header(b"\0\0\0\x03\x0c") == (3, 12)


def test_fields_read_in_order_and_nothing_may_follow() -> None:
    r = Reader(wire.u32(7) + wire.string(b"key") + b"\x01")
    assert (r.u32(), r.string(), r.byte(), r.remaining) == (7, b"key", 1, 0)
    r.end()
    r = Reader(wire.string(b"x") + b"!")
    r.string()
    with pytest.raises(Malformed, match="after the last field"):
        r.end()


@pytest.mark.parametrize("data", [b"", b"\0\0\0", b"\0\0\0\x05abc", b"\xff\xff\xff\xff"])
def test_truncated_fields_are_malformed(data: bytes) -> None:
    with pytest.raises(Malformed):
        Reader(data).string()


def test_the_secret_bearing_messages_include_a_smartcard_pin() -> None:
    assert {wire.ADD_IDENTITY, wire.ADD_ID_CONSTRAINED, wire.LOCK, wire.UNLOCK,
            wire.ADD_SMARTCARD_KEY} <= wire.SECRET_BEARING
    assert wire.SIGN_REQUEST not in wire.SECRET_BEARING
    assert wire.MAX_MESSAGE == 256 * 1024
