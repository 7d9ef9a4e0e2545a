"""The accept loop: a socket guarded like every listener, connections capped, idle closed."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretvault.api.errors import FailedPrecondition
from secretvault.backends import SlotAllocator
from secretvault.vault.agent import wire
from secretvault.vault.agent.listener import AgentListener
from secretvault.vault.keyring import Keyring
from secretvault.vault.policy import SocketBinding
from tests.unit.vault.agent._support import service


@pytest.fixture
def short() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sv-", dir="/tmp") as d:
        yield d


def _ask(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(5)
        c.connect(path)
        c.sendall(data)
        return c.recv(64)


def test_serves_caps_and_closes(ring: Keyring, allocator: SlotAllocator, tmp_path: Path,
                                short: str) -> None:
    path = os.path.join(short, "run", "agent.sock")
    listener = AgentListener(SocketBinding(path, "owner"), service(ring, allocator, tmp_path),
                             connections=threading.BoundedSemaphore(2), idle_seconds=0.5)
    listener.bind()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    listener.start()
    try:
        assert _ask(path, wire.message(wire.REQUEST_IDENTITIES)) == wire.message(
            wire.IDENTITIES_ANSWER, b"\0\0\0\0")
        deadline = time.monotonic() + 5  # the first connection's place is given back
        while listener._connections._value < 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        held = [socket.socket(socket.AF_UNIX) for _ in range(3)]
        for c in held:
            c.settimeout(5)
            c.connect(path)
        time.sleep(0.2)
        assert held[2].recv(1) == b"" and listener.refused == 1  # the third: over the cap
        # the idle ones are closed after idle_seconds
        assert held[0].recv(1) == b"" and held[1].recv(1) == b""
        for c in held:
            c.close()
    finally:
        listener.stop()
    assert not os.path.exists(path)


def test_a_live_socket_is_never_replaced(ring: Keyring, allocator: SlotAllocator,
                                         tmp_path: Path, short: str) -> None:
    path = os.path.join(short, "run", "agent.sock")
    svc = service(ring, allocator, tmp_path)
    first = AgentListener(SocketBinding(path, "owner"), svc,
                          connections=threading.BoundedSemaphore(2), idle_seconds=1)
    first.bind()
    first.start()
    try:
        second = AgentListener(SocketBinding(path, "owner"), svc,
                               connections=threading.BoundedSemaphore(2), idle_seconds=1)
        with pytest.raises(Exception, match="already listening"):
            second.bind()
    finally:
        first.stop()


def test_a_listener_that_never_bound_leaves_another_servers_socket(
    ring: Keyring, allocator: SlotAllocator, tmp_path: Path, short: str,
) -> None:
    # a second `serve --ssh-agent` that fails to start stops its listeners: it must not
    # unlink the agent socket the first server is serving on
    path = os.path.join(short, "run", "agent.sock")
    os.makedirs(os.path.dirname(path), mode=0o700)
    with socket.socket(socket.AF_UNIX) as first:
        first.bind(path)
        first.listen(1)
        listener = AgentListener(SocketBinding(path, "owner"),
                                 service(ring, allocator, tmp_path),
                                 connections=threading.BoundedSemaphore(2), idle_seconds=0.5)
        with pytest.raises(FailedPrecondition, match="already listening"):
            listener.bind()
        listener.stop()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
