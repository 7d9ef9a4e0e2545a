"""The secretvault gRPC server: listeners, health, reflection, draining.

:func:`create_server` returns a started :class:`VaultServer`, a context
manager that always stops: it drains in-flight calls, then zeroes and unmaps
every secret page.  ``secretvault serve`` (:mod:`secretvault.vault.cli.serve`)
runs one until SIGTERM or SIGINT; tests and benchmarks embed it.  What it
serves is set by :class:`~secretvault.vault.config.ServerConfig`; how its Unix
sockets are kept safe is :mod:`secretvault.vault.listeners`.

Listeners (see ``docs/access-control.md``):

* the **default Unix socket** (``VaultConfig.socket``), mode 0600, owned by
  the serving user, in a directory the server creates 0700 (or checks is not
  writable by others).  Its identity is the server's own user: allowed
  everything;
* **more Unix sockets**, each bound to one policy identity and guarded by its
  file's owner, group and mode (``[[identities.NAME.sockets]]`` in the policy,
  or :attr:`ServerConfig.listeners`).  Each listener is its own
  ``grpc.Server``: grpcio does not tell a handler which socket a call came
  in on, nor the peer's credentials (``context.peer()`` is ``"unix:"``), so
  separate servers are how a call's identity is known;
* optionally **TCP** with TLS, or mutual TLS when a client CA is given (the
  client certificate's SAN URI, else CN, is the identity).

Each listener holds at most its share of the descriptor table, so the
callers of one cannot lock another out (:mod:`secretvault.vault.connections`).
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from secretvault.api._proto.secretvault.v1 import keys_pb2
from secretvault.api.errors import FailedPrecondition, InvalidArgument
from secretvault.backends import tracer_pid
from secretvault.vault.agent.serving import AgentServer, agent_bindings
from secretvault.vault.app import Vault, open_vault
from secretvault.vault.audit import AuditLog
from secretvault.vault.config import ServerConfig
from secretvault.vault.connections import ConnectionBudget, grpc_options, plan
from secretvault.vault.edge import Authenticator, Edge, EdgeInterceptor
from secretvault.vault.handlers import SERVICE_NAMES, generic_handlers
from secretvault.vault.listeners import bind_unix, remove_socket, unix_bindings
from secretvault.vault.metrics import Metrics, split_host_port
from secretvault.vault.policy import OWNER, Policy, SocketBinding
from secretvault.vault.servicers import CryptoServicer, KeyServicer, StatsServicer
from secretvault.vault.stats import OperationCounters, StatsSource, WorkerInfo
from secretvault.vault.unsealing import Progress

#: the service whose health follows the store's (every other serves from secret memory)
KEY_SERVICE = keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name
#: the exit status of a server stopped by ``stop_on_tracer``
EXIT_TRACED = 3
#: with ``stop_on_tracer``, every thread's TracerPid is read every this many checks
#: (the main thread's at every check: gdb and strace -p attach to it first)
EVERY_THREAD_CHECK = 10


@dataclass
class _Listener:
    name: str  # "unix:/path" or "tcp:host:port"
    server: grpc.Server
    identity: str  # the fixed identity, or "mutual TLS" / "TLS"
    path: str | None = None


class VaultServer:
    """A running server: every listener, one vault.  Use as a context manager."""

    def __init__(self, config: ServerConfig, vault: Vault, *, owns_vault: bool) -> None:
        self.config = config
        self.vault = vault
        self._owns_vault = owns_vault
        self.policy = Policy.load(config.policy_file) if config.policy_file else Policy()
        self.counters = OperationCounters()
        #: set when this server is one worker of ``serve --workers N``
        self.worker = config.worker
        quotas = vault.keyring.quotas
        quotas.configure(max_versions=config.max_versions_per_key,
                         budget=self.policy.secret_memory,
                         identities=(OWNER, *self.policy.identities))
        slot = config.worker
        self.stats = StatsSource(vault.allocator.statistics, vault.keyring.counts_by_type,
                                 self.counters, quotas, stop_on_tracer=config.stop_on_tracer,
                                 tracer_check_seconds=config.tracer_check_seconds,
                                 feed=None if vault.feed is None else vault.feed.statistics,
                                 worker=None if slot is None else
                                 WorkerInfo(slot.index, slot.count, slot.supervisor_pid))
        self.metrics = Metrics(self.stats) if config.metrics else None
        self.metrics_address: tuple[str, int] | None = None
        self.audit = AuditLog(config.audit_log, fail_open=config.audit_fail_open,
                              worker=None if slot is None else slot.index)
        self.edge = Edge(self.policy, self.audit, self.counters, self.metrics,
                         max_batch=config.max_batch_operations, workers=config.workers,
                         max_streams_per_identity=config.max_streams_per_identity,
                         stream_idle_seconds=config.stream_idle_seconds)
        self.agent: AgentServer | None = None
        # with --workers, the SSH agent is worker 0's alone: keys added with
        # ssh-add live in one process's memory, and every connection must see them
        if agent_bindings(config, self.policy) and (slot is None or slot.index == 0):
            self.agent = AgentServer(config, self.policy, vault.keyring, vault.allocator,
                                     self.audit, self.counters,
                                     self.metrics.observe if self.metrics else None)
        self.stopping = threading.Event()
        self.health = health.HealthServicer()
        self.listeners: list[_Listener] = []
        self.tcp_port: int | None = None
        #: each listener's connection cap and the descriptors behind it (set by start)
        self.connections: ConnectionBudget | None = None
        # one thread pool per listener (see ServerConfig.workers); threads start
        # on demand, so a quiet listener costs none
        self._executors: list[concurrent.futures.ThreadPoolExecutor] = []
        self._handlers = generic_handlers(
            KeyServicer(vault.keyring),
            CryptoServicer(vault.keyring),
            StatsServicer(self.stats, self.stopping),
        )
        self._stop_lock = threading.Lock()
        self._finish_lock = threading.Lock()
        self._drains: list[threading.Event] | None = None
        self._grace = config.grace_seconds
        self._stopped = threading.Event()

    # --- start -------------------------------------------------------------------------

    def _new_server(self, listener: str, identity: str | None, *,
                    reuse_port: bool = False) -> grpc.Server:
        limit = self.config.max_message_bytes
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", limit),
            # a batch's answers can outgrow its question (ciphertexts carry a
            # nonce and a tag); the client's own receive limit still applies
            ("grpc.max_send_message_length", 4 * limit),
            # only the workers of one serve --workers share a port: SO_REUSEPORT
            # lets each bind it, and the kernel spreads connections among them
            ("grpc.so_reuseport", int(reuse_port)),
        ]
        assert self.connections is not None
        options += grpc_options(self.config, self.connections)
        interceptor = EdgeInterceptor(self.edge, Authenticator(listener, identity, self.policy))
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="secretvault-rpc")
        self._executors.append(executor)
        server = grpc.server(
            executor,
            interceptors=[interceptor],
            options=options,
            # beyond this many calls in progress (running or waiting for a
            # thread), grpc answers RESOURCE_EXHAUSTED at once
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers(self._handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            server,
        )
        return server

    def start(self, after_bind: Callable[[], None] | None = None) -> VaultServer:
        """Bind every listener, call ``after_bind`` (``serve`` drops the capabilities
        binding needed there), then start serving."""
        try:
            bindings = unix_bindings(self.config, self.policy)
            # every listener's cap fits, with a reserve, under RLIMIT_NOFILE
            agents = self.agent.listeners if self.agent is not None else []
            self.connections = plan(self.config,
                                    len(bindings) + bool(self.config.tcp) + len(agents))
            slot = self.worker
            for k, u in enumerate(bindings):
                # a call's listener is the socket its client connected to: a
                # worker's private socket is the public one's, relayed
                name = f"unix:{u.path}"
                server = self._new_server(name, u.identity)
                private = u if slot is None else SocketBinding(slot.socket(k), u.identity)
                bind_unix(server, private)
                self.listeners.append(_Listener(name, server, u.identity, private.path))
            if self.agent is not None:
                self.agent.bind([u.path for u in bindings])
            if self.config.tcp:
                self._start_tcp()
            if self.metrics is not None and slot is not None:
                self.metrics.serve_unix(slot.metrics_socket)  # the supervisor serves them
            elif self.metrics is not None and self.config.metrics:
                self.metrics_address = self.metrics.bind(self.config.metrics)
            if after_bind is not None:
                after_bind()
            # every thread started from here on starts with no capability
            if self.metrics_address is not None:
                assert self.metrics is not None
                self.metrics.start()
            if self.vault.feed is not None:
                self.vault.feed.start()
            for item in self.listeners:
                item.server.start()
            if self.agent is not None:
                self.agent.start()
            for name in ("", *SERVICE_NAMES):
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
            if self.vault.feed is not None:
                # KeyService serves only while the store can be reached; the
                # crypto and stats services serve from secret memory regardless
                self.vault.feed.on_reachability(self._store_health)
            if self.config.stop_on_tracer:
                threading.Thread(target=self._watch_tracer, name="secretvault-tracer",
                                 daemon=True).start()
        except BaseException:
            self.stop(0)
            raise
        return self

    def _store_health(self, reachable: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if reachable
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        if not self.stopping.is_set():
            self.health.set(KEY_SERVICE, status)

    def _start_tcp(self) -> None:
        c = self.config
        assert c.tcp and c.tls_cert and c.tls_key

        def read(path: str, what: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise InvalidArgument(f"cannot read the {what} {path}: {e.strerror}") from None

        cert, key = read(c.tls_cert, "TLS certificate"), read(c.tls_key, "TLS key")
        ca = read(c.client_ca, "client CA") if c.client_ca else None
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                            require_client_auth=ca is not None)
        host, port = split_host_port(c.tcp)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        name = f"tcp:{address}"
        server = self._new_server(name, None, reuse_port=self.worker is not None)
        try:
            bound = server.add_secure_port(address, creds)
        except RuntimeError as e:
            raise FailedPrecondition(f"cannot listen on {address}: {e}") from None
        if bound == 0:
            raise FailedPrecondition(f"cannot listen on {address}")
        self.tcp_port = bound
        self.listeners.append(_Listener(f"tcp:{host}:{bound}", server,
                                        "mutual TLS" if ca else "TLS"))

    # --- a tracer ----------------------------------------------------------------------

    def _watch_tracer(self) -> None:
        """Poll TracerPid; when a tracer is attached, zero secret memory and exit.

        It runs only while the process runs: a tracer that stops every thread
        at attach (gdb -p) is seen only once it lets the process go on.
        """
        checks = 0
        while True:
            pid = tracer_pid(every_thread=checks % EVERY_THREAD_CHECK == 0)
            if pid:
                self._stop_for_tracer(pid)
            checks += 1
            if self._stopped.wait(self.config.tracer_check_seconds):
                return

    def _stop_for_tracer(self, pid: int) -> None:
        """Refuse calls, zero and unmap every secret page, say so once, exit 3."""
        self.edge.draining.set()
        try:
            # not behind a stop() that may be draining for its grace period:
            # both closes are safe twice and under their own locks.  The
            # keyring waits for calls in it to leave (its write lock), then
            # zeroes every slot; the allocator zeroes every page and unmaps
            self.vault.keyring.close()
            self.vault.allocator.close()
            left = self.vault.backend.statistics()
            done = ("secret memory zeroed and unmapped" if not left.regions
                    else f"{left.regions} secret regions are still mapped")
        except BaseException as e:  # exiting regardless: say what failed
            done = f"zeroing secret memory failed ({e})"
        for path in [item.path for item in self.listeners] + [
                a.path for a in (self.agent.listeners if self.agent else [])]:
            if path:
                remove_socket(path)
        try:
            self.audit.write_one(f"pid:{pid}", "ptrace", "tracer_attached", None, None,
                                 "stopped")
        except BaseException:  # noqa: S110 - the stderr line below still says it
            pass
        print(f"secretvault: error: a tracer (pid {pid}) attached to the server: {done}; "
              "exiting (fix: find who attached; set kernel.yama.ptrace_scope=3 to forbid "
              "it)", file=sys.stderr, flush=True)
        os._exit(EXIT_TRACED)

    # --- stop ----------------------------------------------------------------------------

    def begin_stop(self, grace: float | None = None) -> None:
        """Stop accepting calls now; in-flight calls get ``grace`` seconds.  Returns at once.

        Health turns NOT_SERVING, the listeners close, and a call that still
        slips in is refused with UNAVAILABLE (``ShuttingDown``).
        """
        with self._stop_lock:
            if self._drains is not None:
                return
            self._grace = self.config.grace_seconds if grace is None else grace
            self.health.enter_graceful_shutdown()
            self.edge.draining.set()  # new calls: UNAVAILABLE (ShuttingDown)
            self.stopping.set()  # watches end now instead of holding the drain up
            self._drains = [item.server.stop(self._grace) for item in self.listeners]

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, drain (up to ``grace`` seconds), zero and unmap.  Idempotent."""
        self.begin_stop(grace)
        with self._finish_lock:  # a second caller waits for the first to finish
            if self._stopped.is_set():
                return
            try:
                self._finish()
            finally:
                self._stopped.set()

    def _finish(self) -> None:
        for e in self._drains or ():
            e.wait()
        # handlers of calls cancelled at the end of the grace period may
        # still be unwinding: let them leave the keyring first
        def shutdown() -> None:
            for executor in self._executors:
                executor.shutdown(wait=True)

        done = threading.Thread(target=shutdown, daemon=True)
        done.start()
        done.join(timeout=max(5.0, self._grace))
        if self.metrics is not None:
            self.metrics.close()
        if self.agent is not None:
            # every agent connection ends, then every key held in the agent is zeroed
            self.agent.stop()
        if self._owns_vault:
            # zeroes every slot and unmaps every secret region
            self.vault.close()
        self.audit.close()
        for item in self.listeners:
            if item.path:
                remove_socket(item.path)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> VaultServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def create_server(config: ServerConfig, *, vault: Vault | None = None,
                  progress: Progress | None = None,
                  after_bind: Callable[[], None] | None = None) -> VaultServer:
    """A started server.  Opens the vault unless one is given (then it is not closed).

    ``progress(done, total)`` is called as the keyring unseals each key
    version (see :class:`secretvault.vault.progress.UnsealProgress`).
    """
    config.validate()
    owns = vault is None
    if vault is None:
        vault = open_vault(config.vault, progress=progress, follow=False)
    try:
        server = VaultServer(config, vault, owns_vault=owns)
    except BaseException:
        if owns:
            vault.close()
        raise
    return server.start(after_bind)


__all__ = ["VaultServer", "create_server"]
