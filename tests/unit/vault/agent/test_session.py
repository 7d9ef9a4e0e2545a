"""Reading messages off a real socket: lengths checked, secrets straight into slots."""

from __future__ import annotations

import socket
import struct

import pytest

from secretvault.backends import SlotAllocator
from secretvault.vault.agent import session as sess
from secretvault.vault.agent.wire import MAX_MESSAGE, Malformed
from tests.unit.vault._support import raw
from tests.unit.vault.agent._support import s, secret_message


def _pair(data: bytes, close: bool = True) -> socket.socket:
    a, b = socket.socketpair()
    a.sendall(data)
    if close:
        a.close()
    b.settimeout(5)
    return b


def test_a_message_header_and_a_clean_end() -> None:
    conn = _pair(b"\0\0\0\x03\x0dab")
    assert sess.read_message(conn) == (2, 13)
    assert sess.recv_exact(conn, 2) == b"ab"
    assert sess.read_message(conn) is None  # closed between messages: a clean end


@pytest.mark.parametrize("length", [0, MAX_MESSAGE + 1, 0xFFFFFFFF])
def test_a_forbidden_length_is_malformed(length: int) -> None:
    with pytest.raises(Malformed):
        sess.read_message(_pair(struct.pack(">IB", length, 11)))


def test_a_peer_closing_inside_a_message_is_closed() -> None:
    with pytest.raises(sess.Closed):
        sess.read_message(_pair(b"\0\0"))
    conn = _pair(b"\0\0\0\x09\x0dab")
    sess.read_message(conn)
    with pytest.raises(sess.Closed):
        sess.recv_exact(conn, 8)


def test_a_secret_lands_in_a_slot_and_the_rest_is_drained(allocator: SlotAllocator) -> None:
    body = s(b"public") + s(b"\x42" * 64) + s(b"trailing") + b"\x01"
    msg, conn = secret_message(body, allocator)
    assert msg.string() == b"public"
    slot, n = msg.secret()
    assert n == 64 and raw(slot.address, 64) == b"\x42" * 64
    slot.free()
    msg.drain()  # the comment and the byte, through a slot
    assert msg.remaining == 0 and conn.recv(1) == b""


def test_fields_may_not_run_past_the_message(allocator: SlotAllocator) -> None:
    body = s(b"x" * 10)
    msg, _ = secret_message(body[:-2], allocator)  # the message says it is 12 bytes
    msg.remaining = len(body) - 4  # but the string claims 10 of the 8 left
    with pytest.raises(Malformed):
        msg.string()
    msg, _ = secret_message(struct.pack(">I", 300) + b"\0" * 300, allocator)
    with pytest.raises(Malformed, match="over the 256"):
        msg.secret()
    msg, _ = secret_message(struct.pack(">I", 5000) + b"\0" * 5000, allocator)
    with pytest.raises(Malformed, match="over the 4096"):
        msg.string()


def test_a_secret_cut_short_frees_its_slot(allocator: SlotAllocator) -> None:
    before = allocator.statistics().key_bytes
    a, b = socket.socketpair()
    a.sendall(struct.pack(">I", 64) + b"\1" * 10)
    a.close()
    b.settimeout(5)
    msg = sess.SecretMessage(b, 68, allocator)
    with pytest.raises(sess.Closed):
        msg.secret()
    assert allocator.statistics().key_bytes == before
