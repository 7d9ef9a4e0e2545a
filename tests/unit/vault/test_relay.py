"""The supervisor's relay, on real Unix sockets: bytes both ways, spread, caps, endings."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretvault.vault.relay import CHUNK, Relay


class Upstream:
    """A stand-in worker: a real listening socket that answers ``NAME:`` + what it got."""

    def __init__(self, path: str, name: bytes) -> None:
        self.path, self.name = path, name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(self.name + b":" + data if len(data) < 64 else data)
            with _quiet():
                conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            with _quiet():
                c.shutdown(socket.SHUT_RDWR)


class _quiet:
    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Relay, str, list[Upstream]]]:
    ups = [Upstream(str(tmp_path / f"w{i}.sock"), f"w{i}".encode()) for i in range(2)]
    public = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "public.sock")
    public.bind(path)
    public.listen(64)
    relay = Relay(max_connections=4)
    relay.add_listener(public, "unix:public", [u.path for u in ups])
    relay.set_up(0, True)
    relay.set_up(1, True)
    relay.start()
    yield relay, path, ups
    relay.stop()
    for u in ups:
        u.close()


def _client(path: str) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(10)
    c.connect(path)
    return c


def _ask(c: socket.socket, what: bytes = b"hello") -> bytes:
    c.sendall(what)
    return c.recv(100)


def test_connections_spread_over_the_workers_and_bytes_go_both_ways(world: tuple) -> None:
    relay, path, _ = world
    clients = [_client(path) for _ in range(4)]
    answers = [_ask(c) for c in clients]
    assert sorted(answers) == [b"w0:hello", b"w0:hello", b"w1:hello", b"w1:hello"]
    assert relay.connections() == {"unix:public": [2, 2]}
    for c in clients:
        c.close()


def test_more_than_a_chunk_crosses_in_both_directions(world: tuple) -> None:
    _, path, _ = world
    c = _client(path)
    payload = os.urandom(CHUNK * 5 + 123)
    got = bytearray()

    def read() -> None:
        while len(got) < len(payload):
            data = c.recv(1 << 16)
            if not data:
                return
            got.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    c.sendall(payload)  # echoed whole (the stand-in prefixes only short messages)
    reader.join(30)
    assert bytes(got) == payload
    # EOF from the client reaches the worker, whose EOF reaches the client
    c.shutdown(socket.SHUT_WR)
    assert c.recv(10) == b""
    c.close()


def test_a_worker_that_is_down_gets_no_connection(world: tuple) -> None:
    relay, path, _ = world
    relay.set_up(1, False)
    clients = [_client(path) for _ in range(3)]
    assert [_ask(c) for c in clients] == [b"w0:hello"] * 3
    for c in clients:
        c.close()


def test_a_listener_holds_at_most_its_cap(world: tuple) -> None:
    relay, path, _ = world
    held = [_client(path) for _ in range(4)]
    for c in held:
        _ask(c)
    extra = _client(path)  # accepted by the kernel, closed by the relay
    try:
        extra.sendall(b"x")
        assert extra.recv(10) == b""
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed before the write: refused all the same
    held[0].close()
    _wait(lambda: sum(relay.connections()["unix:public"]) == 3)
    again = _client(path)
    assert _ask(again).endswith(b":hello")
    for c in (*held[1:], extra, again):
        c.close()


def test_a_worker_that_goes_away_closes_its_clients(world: tuple) -> None:
    relay, path, ups = world
    clients = [_client(path) for _ in range(2)]
    answers = {_ask(c): c for c in clients}
    gone = answers[b"w1:hello"]
    ups[1].close()
    assert gone.recv(10) == b""  # the relay closed the client's side too
    _wait(lambda: relay.connections()["unix:public"][1] == 0)
    assert _ask(answers[b"w0:hello"]) == b"w0:hello"
    for c in clients:
        c.close()


def test_closed_listeners_accept_nothing_but_relayed_connections_go_on(world: tuple) -> None:
    relay, path, _ = world
    c = _client(path)
    first = _ask(c)
    relay.close_listeners()
    _wait(lambda: _refused(path))
    assert _ask(c) == first
    c.close()


def _refused(path: str) -> bool:
    try:
        _client(path).close()
    except OSError:
        return True
    return False


def _wait(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
