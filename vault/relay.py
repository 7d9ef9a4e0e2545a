"""The supervisor's relay: every public Unix socket reaches every worker.

grpcio binds a Unix socket in one process and cannot adopt a connection
accepted elsewhere (its C core's ``grpc_server_add_channel_from_fd`` is not
bound in Python), so N processes cannot share one socket file the way they
share a TCP port with SO_REUSEPORT.  The supervisor therefore owns each
public socket file (its path, owner, group and mode, checked and set as a
single server does: :func:`~secretvault.vault.listeners.listen_unix`), and
each worker binds the same listener at a private socket in a 0700 directory
of the supervisor's.  The kernel checks the *public* file at ``connect(2)``,
so the identity a listener stands for is still established by the kernel;
the relay then joins the accepted connection to one worker's private socket
for the same listener and copies bytes both ways, untouched (HTTP/2 with the
gRPC calls inside: the relay parses nothing).

A connection goes to the worker holding the fewest of that listener's
relayed connections (ties in turn), so a client that opens several
connections spreads over the workers; one connection stays with one worker.

One thread, one ``epoll`` set, level-triggered.  Bytes are read into one
scratch buffer and written on at once; what the other side cannot take yet
is kept (at most one read, per direction) and that side is not read again
until it is written.  So a slow reader holds at most :data:`CHUNK` bytes per
direction here (64 KiB), and the kernel's socket buffers do the rest.  Each listener
holds at most ``max_connections`` relayed connections; one beyond is closed
as it is accepted, as grpc's own listeners do.  A connection idle for long
is closed by the worker (``connection_idle_seconds``), and the relay closes
the client's side when the worker's goes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("secretvault.relay")

#: bytes read at once, and the most kept for a side that cannot take them yet: a
#: listener's callers can make the relay hold at most 2 x CHUNK per connection,
#: 128 MiB at the default 1,024 connections (the kernel's socket buffers hold the rest)
CHUNK = 1 << 16

_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_BAD = select.EPOLLHUP | select.EPOLLERR


@dataclass(eq=False)
class _Public:
    sock: socket.socket
    name: str
    #: each worker's private socket for this listener, by worker index
    targets: Sequence[str]
    #: relayed connections now, by worker index
    active: list[int] = field(default_factory=list)
    turn: int = 0
    refused: int = 0


@dataclass(eq=False)
class _End:
    sock: socket.socket
    public: _Public
    worker: int
    peer: _End | None = None
    #: bytes read from the peer that this side could not take yet
    pending: bytes = b""
    #: this side sent EOF (nothing more will be read from it)
    eof: bool = False
    mask: int = 0


class Relay:
    """Public Unix listeners joined to workers' private sockets, on one thread."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._epoll = select.epoll()
        self._publics: dict[int, _Public] = {}
        self._ends: dict[int, _End] = {}
        self._up: set[int] = set()
        self._lock = threading.Lock()  # _up, and the commands below
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, _IN)
        self._commands: list[str] = []
        self._thread: threading.Thread | None = None
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)

    # --- set-up, from the supervisor's thread -------------------------------------------

    def add_listener(self, sock: socket.socket, name: str, targets: Sequence[str]) -> None:
        """Relay connections accepted on ``sock`` to ``targets[worker]``."""
        sock.setblocking(False)
        public = _Public(sock, name, list(targets), [0] * len(targets))
        self._publics[sock.fileno()] = public
        self._epoll.register(sock.fileno(), _IN)

    def set_up(self, worker: int, up: bool) -> None:
        """Whether new connections may go to ``worker`` (ready, and not stopping)."""
        with self._lock:
            (self._up.add if up else self._up.discard)(worker)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="secretvault-relay",
                                        daemon=True)
        self._thread.start()

    def connections(self) -> dict[str, list[int]]:
        """Relayed connections now, per public listener, by worker index."""
        return {p.name: list(p.active) for p in self._publics.values()}

    def close_listeners(self) -> None:
        """Accept no more (the public sockets close); relayed connections go on."""
        self._command("close_listeners")

    def stop(self) -> None:
        """Close everything and end the thread."""
        self._command("stop")
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(OSError):
            self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _command(self, what: str) -> None:
        with self._lock:
            self._commands.append(what)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")
        if self._thread is None:  # never started: run it here
            self._run_commands()

    # --- the loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        poll = self._epoll.poll
        publics, ends = self._publics, self._ends
        while True:
            try:
                events = poll()
            except InterruptedError:
                continue
            for fd, ev in events:
                end = ends.get(fd)
                if end is not None:
                    self._serve(end, ev)
                elif fd in publics:
                    self._accept(publics[fd])
                elif fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    if self._run_commands():
                        return

    def _run_commands(self) -> bool:
        """Run the queued commands; True when the loop must end."""
        with self._lock:
            commands, self._commands = self._commands, []
        stop = False
        for what in commands:
            if what in ("close_listeners", "stop"):
                for fd, public in list(self._publics.items()):
                    with contextlib.suppress(OSError):
                        self._epoll.unregister(fd)
                    public.sock.close()
                    del self._publics[fd]
            if what == "stop":
                for end in list(self._ends.values()):
                    self._close(end)
                stop = True
        return stop

    def _accept(self, public: _Public) -> None:
        while True:
            try:
                client, _ = public.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the client waits in the backlog
                log.warning("the relay cannot accept on %s: %s", public.name, e.strerror)
                return
            if sum(public.active) >= self.max_connections:
                public.refused += 1
                client.close()
                continue
            worker, upstream = self._connect(public)
            if upstream is None:
                client.close()  # no worker is up: the client retries
                continue
            client.setblocking(False)
            a = _End(client, public, worker)
            b = _End(upstream, public, worker, peer=a)
            a.peer = b
            public.active[worker] += 1
            for end in (a, b):
                self._ends[end.sock.fileno()] = end
                end.mask = _IN
                self._epoll.register(end.sock.fileno(), _IN)

    def _connect(self, public: _Public) -> tuple[int, socket.socket | None]:
        """A connection to the up worker with the fewest of ``public``'s connections."""
        with self._lock:
            up = sorted(self._up)
        n = len(public.targets)
        order = sorted((w for w in up if w < n),
                       key=lambda w: (public.active[w], (w - public.turn) % n))
        public.turn = (public.turn + 1) % max(n, 1)
        for worker in order:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                sock.connect(public.targets[worker])
            except OSError as e:
                # gone (restarting) or its backlog is full: the next one
                sock.close()
                if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):
                    log.warning("the relay cannot reach worker %d for %s: %s", worker,
                                public.name, e.strerror)
                continue
            return worker, sock
        return -1, None

    def _serve(self, end: _End, ev: int) -> None:
        peer = end.peer
        assert peer is not None
        try:
            if ev & _OUT and end.pending:
                sent = end.sock.send(end.pending)
                end.pending = end.pending[sent:]
                if not end.pending and peer.eof:
                    end.sock.shutdown(socket.SHUT_WR)
            if ev & (_IN | _BAD) and end.mask & _IN:
                n = end.sock.recv_into(self._buf)
                if n == 0:
                    end.eof = True
                    if not peer.pending:
                        peer.sock.shutdown(socket.SHUT_WR)
                    if peer.eof:
                        self._close(end)
                        return
                else:
                    try:
                        sent = peer.sock.send(self._view[:n])
                    except BlockingIOError:
                        sent = 0
                    if sent < n:
                        peer.pending = bytes(self._view[sent:n])
            elif ev & _BAD and not ev & _OUT:
                # hung up while we do not read it (its peer is full): nothing more
                # can reach it
                self._close(end)
                return
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset, broken pipe: the connection is over
            self._close(end)
            return
        self._interest(end)
        self._interest(peer)

    def _interest(self, end: _End) -> None:
        peer = end.peer
        assert peer is not None
        mask = (0 if end.eof or peer.pending else _IN) | (_OUT if end.pending else 0)
        if mask != end.mask:
            end.mask = mask
            with contextlib.suppress(OSError):
                self._epoll.modify(end.sock.fileno(), mask)

    def _close(self, end: _End) -> None:
        """Close both sides of ``end``'s connection."""
        closed = False
        for e in (end, end.peer):
            if e is None or self._ends.get(e.sock.fileno()) is not e:
                continue
            fd = e.sock.fileno()
            del self._ends[fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
            e.sock.close()
            closed = True
        if closed:
            end.public.active[end.worker] -= 1
