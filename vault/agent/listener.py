"""The agent's Unix socket: an accept loop, one thread per connection, both bounded.

Each agent socket is bound to one identity (the ``--ssh-agent`` socket to
the owner, each ``[[identities.NAME.agent_sockets]]`` to NAME) and guarded
by its file's owner, group and mode and its directories exactly as the gRPC
sockets are (:func:`secretvault.vault.listeners.bind_socket`).  Every
connection is served by a thread of its own, and an identity holds at most
``ssh_agent_max_connections`` connections over all its agent sockets: one
more is closed as it is accepted, so threads are bounded too.  A connection
that sends nothing for ``ssh_agent_idle_seconds`` (between messages or inside
one) is closed, so a client that connects and goes quiet holds its thread
for no longer than that.  The accept loop also zeroes held keys whose
lifetime ran out, at least once a second.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from secretvault.api.errors import VaultError
from secretvault.vault.agent import wire
from secretvault.vault.agent.service import AgentService
from secretvault.vault.agent.session import (
    Caller,
    Closed,
    SecretMessage,
    Session,
    read_message,
    recv_exact,
)
from secretvault.vault.agent.wire import Malformed
from secretvault.vault.listeners import bind_socket, remove_socket
from secretvault.vault.policy import SocketBinding

log = logging.getLogger("secretvault.agent")

#: how often the accept loop wakes when idle (to sweep expired keys, to stop)
_TICK = 0.5


class AgentListener:
    """One agent socket, serving ``service`` as ``binding.identity``."""

    def __init__(self, binding: SocketBinding, service: AgentService, *,
                 connections: threading.BoundedSemaphore, idle_seconds: float) -> None:
        self.binding = binding
        self.name = f"ssh-agent:{binding.path}"
        self._service = service
        self._connections = connections
        self._idle = idle_seconds
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._last_sweep = 0.0
        #: connections closed at accept because the identity held its cap
        self.refused = 0

    @property
    def path(self) -> str:
        return self.binding.path

    def bind(self) -> None:
        def create(path: str) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind(path)
                sock.listen(128)
            except BaseException:
                sock.close()
                raise
            sock.settimeout(_TICK)
            self._sock = sock

        bind_socket(self.binding, create)

    def start(self) -> None:
        assert self._sock is not None
        self._thread = threading.Thread(target=self._accept_loop, name="secretvault-agent",
                                        daemon=True)
        self._thread.start()

    # --- accepting ----------------------------------------------------------------------

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            self._service.sweep(self.name)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            self._sweep()
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stopping.is_set():
                    return
                # EMFILE and the like: say so, wait a little, go on serving
                log.warning("the agent socket %s cannot accept: %s", self.path, e.strerror)
                time.sleep(_TICK)
                continue
            if not self._connections.acquire(blocking=False):
                self.refused += 1
                self._service.record.count("ssh_connection", "RESOURCE_EXHAUSTED")
                conn.close()
                continue
            try:
                threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                 name="secretvault-agent-conn").start()
            except BaseException:
                conn.close()
                self._connections.release()
                raise

    # --- one connection ---------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.add(conn)
        try:
            conn.settimeout(self._idle)
            self._converse(conn, Session(Caller(self.binding.identity, self.name)))
        except (Closed, OSError):  # closed, timed out (TimeoutError), reset
            pass
        except Exception:  # a bug: this connection ends, the listener goes on
            log.exception("an agent connection on %s failed", self.path)
        finally:
            with self._open_lock:
                self._open.discard(conn)
            conn.close()
            self._connections.release()

    def _converse(self, conn: socket.socket, session: Session) -> None:
        service = self._service
        while not self._stopping.is_set():
            try:
                head = read_message(conn)
            except Malformed:
                # a length the protocol forbids: the stream is out of step
                service.record.count("ssh_malformed", "INVALID_ARGUMENT")
                conn.sendall(wire.FAILURE_MESSAGE)
                return
            if head is None:
                return
            length, kind = head
            if kind in wire.SECRET_BEARING:
                msg = SecretMessage(conn, length, service.allocator)
                try:
                    reply = service.handle_secret(session, kind, msg)
                except VaultError:  # out of secret memory, a closed keyring
                    reply = wire.FAILURE_MESSAGE
                msg.drain()
            else:
                body = recv_exact(conn, length)
                try:
                    reply = service.handle(session, kind, body)
                except VaultError:
                    reply = wire.FAILURE_MESSAGE
            conn.sendall(reply)

    # --- stopping ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting, end every connection, remove the socket file."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._sock is not None:
            # only a socket this listener made: one that failed to bind must not
            # unlink another server's live socket at the same path
            self._sock.close()
            remove_socket(self.path)
