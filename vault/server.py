"""The secretvault gRPC server: listeners, health, reflection, draining.

:func:`run` is what ``secretvault serve`` calls: it opens the vault, prints
one start-up summary, serves until SIGTERM or SIGINT, then drains in-flight
calls, zeroes and unmaps every secret page, and returns 0.

:func:`create_server` is the embeddable form (tests, benchmarks): it returns
a started :class:`VaultServer`, a context manager that always stops.

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
"""

from __future__ import annotations

import concurrent.futures
import errno
import grp
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from secretvault.api.errors import FailedPrecondition, InvalidArgument, VaultError
from secretvault.vault.app import Vault, VaultConfig, open_vault
from secretvault.vault.audit import AuditLog
from secretvault.vault.edge import Authenticator, Edge, EdgeInterceptor
from secretvault.vault.keyring import Progress
from secretvault.vault.metrics import Metrics, split_host_port
from secretvault.vault.policy import OWNER, Policy, SocketBinding
from secretvault.vault.progress import UnsealProgress
from secretvault.vault.servicers import (
    MAX_BATCH_OPERATIONS,
    SERVICE_NAMES,
    CryptoServicer,
    KeyServicer,
    StatsServicer,
    generic_handlers,
)
from secretvault.vault.stats import OperationCounters, StatsSource

log = logging.getLogger("secretvault.server")

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``secretvault serve`` configures.  Field names are stable.

    The default socket is ``vault.socket``; the data directory, backend and
    unseal material are in :class:`~secretvault.vault.app.VaultConfig`.
    """

    #: the vault itself: data directory, default socket path, backend, unseal
    vault: VaultConfig = field(default_factory=VaultConfig)
    #: serve the default Unix socket (``vault.socket``); False: TCP only
    unix_socket: bool = True
    #: more Unix sockets, each bound to a policy identity (added to those the
    #: policy file declares)
    listeners: tuple[SocketBinding, ...] = ()
    #: ``HOST:PORT`` (or a bare ``PORT``: 127.0.0.1) to also listen on TCP with TLS
    #: (port 0 picks one: see VaultServer.tcp_port); needs tls_cert/tls_key
    tcp: str | None = None
    #: PEM server certificate chain and private key for TCP
    tls_cert: str | None = None
    tls_key: str | None = None
    #: PEM CA bundle: when set, TCP requires a client certificate it signed
    #: (mutual TLS) and the certificate's SAN URI, else CN, is the identity
    client_ca: str | None = None
    #: the TOML policy file; None: only the server's own user may do anything
    policy_file: str | None = None
    #: audit log path; None or "-": stderr
    audit_log: str | None = None
    #: keep serving when the audit log cannot be written (default: fail closed)
    audit_fail_open: bool = False
    #: ``HOST:PORT`` (or a bare ``PORT``: loopback, 127.0.0.1) of the Prometheus
    #: endpoint; None: no metrics endpoint.  Keep it on loopback unless
    #: something else must scrape it (it has no access control).
    metrics: str | None = None
    #: largest request message accepted (bytes); RESOURCE_EXHAUSTED beyond
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: most operations in one BatchRequest; RESOURCE_EXHAUSTED beyond
    max_batch_operations: int = MAX_BATCH_OPERATIONS
    #: seconds in-flight calls get to finish on SIGTERM before being cancelled
    grace_seconds: float = 10.0
    #: handler threads of each listener.  Every listener has its own, so calls
    #: on one socket (or the TCP port) cannot take the threads of another; a
    #: Stream or WatchStats holds one for as long as it lasts, so those take at
    #: most half of a listener's threads (TooManyCalls beyond)
    workers: int = 64
    #: calls one listener accepts at once (running, or queued for a thread);
    #: RESOURCE_EXHAUSTED beyond
    max_concurrent_rpcs: int = 256
    #: Streams and WatchStats one identity may hold open at once, over all
    #: listeners; RESOURCE_EXHAUSTED (TooManyCalls) beyond
    max_streams_per_identity: int = 8
    #: a Stream that receives no operation for this long is cancelled, and so is
    #: a WatchStats that cannot send an update for this long past its interval
    #: (the client stopped reading): neither may park a handler thread
    stream_idle_seconds: float = 60.0

    def validate(self) -> None:
        if not self.unix_socket and not self.tcp:
            raise InvalidArgument("nothing to listen on: enable the Unix socket or give --tcp")
        if self.tcp is not None:
            try:
                split_host_port(self.tcp)
            except ValueError as e:
                raise InvalidArgument(f"--tcp: {e}") from None
            if not (self.tls_cert and self.tls_key):
                raise InvalidArgument(
                    "TCP needs TLS: give --tls-cert and --tls-key (and --client-ca for "
                    "mutual TLS); plain-text TCP is not offered")
        elif self.tls_cert or self.tls_key or self.client_ca:
            raise InvalidArgument("TLS files were given without --tcp HOST:PORT")
        if self.metrics is not None:
            try:
                split_host_port(self.metrics)
            except ValueError as e:
                raise InvalidArgument(f"metrics address: {e}") from None
        if not 1024 <= self.max_message_bytes <= 1 << 30:
            raise InvalidArgument("max_message_bytes must be between 1 KiB and 1 GiB")
        if not 1 <= self.max_batch_operations <= 1_000_000:
            raise InvalidArgument("max_batch_operations must be between 1 and 1,000,000")
        if self.grace_seconds < 0 or self.workers < 1:
            raise InvalidArgument("grace_seconds must be >= 0 and workers >= 1")
        if self.max_concurrent_rpcs < 1 or self.max_streams_per_identity < 1:
            raise InvalidArgument("max_concurrent_rpcs and max_streams_per_identity must be "
                                  ">= 1")
        if not 0 < self.stream_idle_seconds <= 86400:
            raise InvalidArgument("stream_idle_seconds must be more than 0 and at most a day")


# --- Unix socket safety -------------------------------------------------------------------


def _dir_mode(mode: int) -> int:
    """The socket directory's mode: only as open as the socket needs to be reached."""
    if mode & 0o007:
        return 0o711
    if mode & 0o070:
        return 0o710
    return 0o700


def _group_token(gid: int) -> str:
    """The group's name, or its number when it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _group_name(gid: int) -> str:
    token = _group_token(gid)
    return f"gid {gid}" if token == str(gid) else f"{token!r} (gid {gid})"


def _chgrp(path: str, group: int, what: str) -> None:
    """Give ``path`` to ``group``, or say exactly why the kernel refused.

    An unprivileged process may change a file's group only to a group it is
    a member of (its effective or a supplementary gid), and only on a file
    it owns; CAP_CHOWN (root) may give any group.  EPERM here is that rule,
    not a missing write permission.
    """
    try:
        os.chown(path, -1, group)
    except PermissionError:
        mine = sorted({os.getegid(), *os.getgroups()})
        name = _group_name(group)
        raise FailedPrecondition(
            f"cannot give {what} {path} to group {name}: a process may only change a "
            f"file's group to a group it belongs to, and this server (uid {os.geteuid()}, "
            f"groups {', '.join(str(g) for g in mine)}) is not in {name}. Fix: run the vault "
            f"with that group as a supplementary group (systemd: SupplementaryGroups="
            f"{_group_token(group)}; docker/podman: --group-add {group}; or add the vault's "
            "user to the group), or give the listener a group the vault is in") from None


def prepare_socket_dir(path: str, mode: int = 0o600, group: int | None = None) -> None:
    """Create the socket's directory safely, or check (and repair) the existing one.

    A directory others can write to would let them replace our socket with
    theirs (and collect requests, messages included), so it is refused.
    With a ``group``, the directory must belong to it (its members pass
    through it to reach the socket): a directory left with another group by
    an earlier run is given the right one when the vault owns it, and
    refused when it does not.
    """
    directory = os.path.dirname(os.path.abspath(path))
    want = _dir_mode(mode)
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            os.mkdir(directory, want)
        except FileExistsError:  # created meanwhile: check it like any other
            return prepare_socket_dir(path, mode, group)
        os.chmod(directory, want)  # mkdir's mode is filtered by the umask
        if group is not None:
            try:
                _chgrp(directory, group, "the socket directory")
            except FailedPrecondition:
                os.rmdir(directory)  # not left behind with the wrong group
                raise
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(
            f"the socket directory {directory} is not a directory (or is a symlink)")
    if st.st_uid not in (os.geteuid(), 0):
        raise FailedPrecondition(
            f"the socket directory {directory} belongs to uid {st.st_uid}, not to this "
            f"server (uid {os.geteuid()}) or root: choose another --socket")
    if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        raise FailedPrecondition(
            f"the socket directory {directory} is writable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): another user could replace the socket. Use a "
            "directory only the server's user can write, e.g. /run/secretvault or "
            "$XDG_RUNTIME_DIR/secretvault")
    if group is None:
        return
    current = stat.S_IMODE(st.st_mode)
    # the search (x) bits the listener's users need to pass through
    missing = want & 0o011 & ~current
    if st.st_gid == group and not missing:
        return
    if st.st_uid != os.geteuid():
        # root's directory, and this server is not root: it may not repair it
        raise FailedPrecondition(
            f"the socket directory {directory} belongs to group {_group_name(st.st_gid)} "
            f"(mode {current:04o}), but the listener for {path} needs group "
            f"{_group_name(group)} (mode {want:04o}) to let that group's members through. "
            f"It is owned by uid {st.st_uid}, not by this server (uid {os.geteuid()}), so the "
            f"vault cannot repair it: run 'chgrp {group} {directory} && chmod {want:o} "
            f"{directory}' as its owner, or remove it and let the vault create it")
    if st.st_gid != group:
        # left by an earlier run with another group: ours, so repaired
        _chgrp(directory, group, "the socket directory")
        log.warning("the socket directory %s belonged to group %s: given to %s", directory,
                    _group_name(st.st_gid), _group_name(group))
    if missing:
        os.chmod(directory, current | missing)


def clear_stale_socket(path: str) -> None:
    """Remove a socket left by a dead server; refuse to touch a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        # nothing listens: the socket file outlived its server
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        raise FailedPrecondition(f"cannot check whether {path} is in use: {e.strerror}") from None
    finally:
        probe.close()
    raise FailedPrecondition(
        f"another server is already listening on {path}: stop it or choose another --socket")


def _bind_unix(server: grpc.Server, listener: SocketBinding) -> None:
    path = listener.path
    prepare_socket_dir(path, listener.mode, listener.group)
    clear_stale_socket(path)
    # grpc creates the socket file when the port is added; the umask makes it
    # 0600 from its first instant (the mode is then widened, never narrowed,
    # and the directory already keeps strangers out)
    old = os.umask(0o177)
    try:
        port = server.add_insecure_port(f"unix:{path}")
    except RuntimeError as e:
        raise FailedPrecondition(f"cannot listen on {path}: {e}") from None
    finally:
        os.umask(old)
    if port == 0 or not os.path.exists(path):
        raise FailedPrecondition(f"cannot listen on {path}")
    try:
        if listener.group is not None:
            _chgrp(path, listener.group, "the socket")
        os.chmod(path, listener.mode)
    except BaseException:
        _remove_socket(path)  # not left behind half-configured
        raise
    dmode = stat.S_IMODE(os.stat(os.path.dirname(os.path.abspath(path))).st_mode)
    if (listener.mode & 0o060 and not dmode & 0o010) or (listener.mode & 0o006
                                                         and not dmode & 0o001):
        log.warning("%s is mode %04o but its directory (mode %04o) does not let those users "
                    "through: give the listener a directory of its own", path, listener.mode,
                    dmode)


# --- the server ---------------------------------------------------------------------------


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
        self.stats = StatsSource(vault.allocator.statistics, vault.keyring.counts_by_type,
                                 self.counters)
        self.metrics = Metrics(self.stats) if config.metrics else None
        self.metrics_address: tuple[str, int] | None = None
        self.audit = AuditLog(config.audit_log, fail_open=config.audit_fail_open)
        self.edge = Edge(self.policy, self.audit, self.counters, self.metrics,
                         max_batch=config.max_batch_operations, workers=config.workers,
                         max_streams_per_identity=config.max_streams_per_identity,
                         stream_idle_seconds=config.stream_idle_seconds)
        self.stopping = threading.Event()
        self.health = health.HealthServicer()
        self.listeners: list[_Listener] = []
        self.tcp_port: int | None = None
        # one thread pool per listener (see ServerConfig.workers); threads start
        # on demand, so a quiet listener costs none
        self._executors: list[concurrent.futures.ThreadPoolExecutor] = []
        self._handlers = generic_handlers(
            KeyServicer(vault.keyring),
            CryptoServicer(vault.keyring, max_batch=config.max_batch_operations),
            StatsServicer(self.stats, self.stopping),
        )
        self._stop_lock = threading.Lock()
        self._finish_lock = threading.Lock()
        self._drains: list[threading.Event] | None = None
        self._grace = config.grace_seconds
        self._stopped = threading.Event()

    # --- start -------------------------------------------------------------------------

    def _new_server(self, listener: str, identity: str | None,
                    extra: list[tuple[str, int]] | None = None) -> grpc.Server:
        limit = self.config.max_message_bytes
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", limit),
            # a batch's answers can outgrow its question (ciphertexts carry a
            # nonce and a tag); the client's own receive limit still applies
            ("grpc.max_send_message_length", 4 * limit),
            ("grpc.so_reuseport", 0),
        ]
        interceptor = EdgeInterceptor(self.edge, Authenticator(listener, identity, self.policy))
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="secretvault-rpc")
        self._executors.append(executor)
        server = grpc.server(
            executor,
            interceptors=[interceptor],
            options=options + (extra or []),
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

    def _unix_listeners(self) -> list[SocketBinding]:
        out: list[SocketBinding] = []
        if self.config.unix_socket:
            out.append(SocketBinding(self.config.vault.socket, OWNER, 0o600, None))
        out.extend(self.config.listeners)
        out.extend(self.policy.sockets)
        paths = [os.path.abspath(u.path) for u in out]
        if len(set(paths)) != len(paths):
            raise InvalidArgument("two listeners share one socket path")
        # a directory has one group: two listeners there cannot each have theirs
        groups: dict[str, tuple[int, str]] = {}
        for u in out:
            if u.group is None:
                continue
            directory = os.path.dirname(os.path.abspath(u.path))
            other = groups.setdefault(directory, (u.group, u.path))
            if other[0] != u.group:
                raise InvalidArgument(
                    f"the listeners {other[1]} and {u.path} share the directory {directory} "
                    f"but need different groups ({other[0]} and {u.group}): give each its "
                    "own directory")
        return out

    def start(self) -> VaultServer:
        try:
            for u in self._unix_listeners():
                name = f"unix:{u.path}"
                server = self._new_server(name, u.identity)
                _bind_unix(server, u)
                self.listeners.append(_Listener(name, server, u.identity, u.path))
            if self.config.tcp:
                self._start_tcp()
            for item in self.listeners:
                item.server.start()
            for name in ("", *SERVICE_NAMES):
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
            if self.metrics is not None and self.config.metrics:
                self.metrics_address = self.metrics.serve(self.config.metrics)
        except BaseException:
            self.stop(0)
            raise
        return self

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
        server = self._new_server(name, None)
        try:
            bound = server.add_secure_port(address, creds)
        except RuntimeError as e:
            raise FailedPrecondition(f"cannot listen on {address}: {e}") from None
        if bound == 0:
            raise FailedPrecondition(f"cannot listen on {address}")
        self.tcp_port = bound
        self.listeners.append(_Listener(f"tcp:{host}:{bound}", server,
                                        "mutual TLS" if ca else "TLS"))

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
        if self._owns_vault:
            # zeroes every slot and unmaps every secret region
            self.vault.close()
        self.audit.close()
        for item in self.listeners:
            if item.path:
                _remove_socket(item.path)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> VaultServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _remove_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def create_server(config: ServerConfig, *, vault: Vault | None = None,
                  progress: Progress | None = None) -> VaultServer:
    """A started server.  Opens the vault unless one is given (then it is not closed).

    ``progress(done, total)`` is called as the keyring unseals each key
    version (see :class:`secretvault.vault.progress.UnsealProgress`).
    """
    config.validate()
    owns = vault is None
    if vault is None:
        vault = open_vault(config.vault, progress=progress)
    try:
        server = VaultServer(config, vault, owns_vault=owns)
    except BaseException:
        if owns:
            vault.close()
        raise
    return server.start()


# --- the start-up summary -------------------------------------------------------------------


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def summary(server: VaultServer) -> str:
    """The one start-up summary, as text."""
    v = server.vault
    s = v.allocator.statistics()
    lines = ["secretvault is serving"]
    if s.protection == "secretmem":
        lines.append(f"  backend      {s.backend}: keys live in secret memory (memfd_secret), "
                     "out of the kernel's direct map")
    else:
        lines.append(f"  backend      {s.backend}: a MODEL for measurement and development")
        lines.append("  !!! WARNING  keys are NOT in secret memory: they are in ordinary locked "
                     "memory. Do not use this backend in production.")
    ml = s.memlock
    soft = "unlimited" if ml.soft < 0 else _bytes(ml.soft)
    if ml.cap_ipc_lock:
        limit = f"{soft}, not enforced: the server has CAP_IPC_LOCK"
    else:
        limit = f"{soft} (locked now {_bytes(ml.locked)})"
    lines.append(f"  memlock      {limit}")
    room = ", ".join(f"{n:,} {t}" for t, n in ml.headroom_keys if n is not None)
    lines.append(f"  headroom     {room + ' more keys' if room else 'unlimited'}")
    counts = v.keyring.counts_by_type()
    damaged = v.keyring.damaged_keys()
    lines.append(f"  keys         {sum(counts.values())} loaded"
                 + (f", {len(damaged)} damaged" if damaged else ""))
    if damaged:
        names = ", ".join(repr(n) for n in list(damaged)[:5])
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        lines.append(f"  !!! WARNING  damaged keys (their records do not open; using them "
                     f"fails with DATA_LOSS naming the damage): {names}{more}")
    import_damage = v.keyring.import_key_damage
    if import_damage is not None:
        lines.append("  !!! WARNING  wrapped import is unavailable (ImportKey and GetImportKey "
                     f"answer FAILED_PRECONDITION): {import_damage}; everything else works")
    lines.append(f"  store        {v.config.store_path}")
    for item in server.listeners:
        lines.append(f"  listening    {item.name} (identity: {item.identity})")
    lines.append(f"  policy       {server.policy.source}")
    fail = "fail open" if server.audit.fail_open else "fail closed"
    lines.append(f"  audit        {server.audit.where} ({fail})")
    if server.metrics_address:
        host, port = server.metrics_address
        lines.append(f"  metrics      http://{host}:{port}/metrics")
    if v.created_key_file:
        lines.append(f"  unseal key   created {v.created_key_file} (mode 0600)")
        lines.append("  !!! WARNING  the unseal key sits next to the store it unseals: in "
                     "production keep it elsewhere (another volume, a secret manager) and "
                     "pass --unseal-key-file")
    return "\n".join(lines)


# --- run ---------------------------------------------------------------------------------


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM or SIGINT, then drain, zero secret memory, and return 0.

    Raises :class:`~secretvault.api.errors.VaultError` (a one-line message naming
    the fix) when the server cannot start.  Must be called from the main
    thread (it installs the signal handlers, and restores them on return).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                            "%(message)s", stream=sys.stderr)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # a bar on a terminal while many key versions unseal; one line after
        progress = UnsealProgress()
        try:
            server = create_server(config, progress=progress)
        finally:
            progress.close()
        if progress.started:
            print(progress.line(), file=sys.stderr, flush=True)
        with server:
            print(summary(server), file=sys.stderr, flush=True)
            while not stop.wait(1.0):
                pass
            server.begin_stop(config.grace_seconds)
            name = signal.Signals(received[0]).name if received else "stop"
            print(f"secretvault: {name}: draining in-flight calls (up to "
                  f"{config.grace_seconds:g} s), then zeroing secret memory", file=sys.stderr,
                  flush=True)
        # said only when the backend agrees that nothing is mapped any more
        left = server.vault.backend.statistics()
        if left.regions or left.pages_mapped:
            print(f"secretvault: stopped, but {left.regions} secret regions "
                  f"({left.pages_mapped} pages) are still mapped", file=sys.stderr, flush=True)
            return 1
        print("secretvault: stopped; secret memory zeroed and unmapped", file=sys.stderr,
              flush=True)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- python -m secretvault.vault.server (development and tests; users run `secretvault serve`) ---


def _parse(argv: Sequence[str] | None) -> ServerConfig:
    """``python -m secretvault.vault.server ARGS`` is ``secretvault serve ARGS``: one parser."""
    from secretvault.vault.cli import build_parser, server_config

    args = build_parser().parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    config = server_config(args)
    assert isinstance(config, ServerConfig)
    return config


#: development and tests only: after a stop, hold the process (its memory
#: unmapped, its files closed) until a line arrives on stdin, so a test can
#: read /proc/PID/maps and /proc/PID/status of the stopped server from outside
HOLD_AFTER_STOP_ENV = "SECRETVAULT_DEV_HOLD_AFTER_STOP"


def main(argv: Sequence[str] | None = None) -> int:
    config = _parse(argv)
    try:
        code = run(config)
        if os.environ.get(HOLD_AFTER_STOP_ENV) == "1":
            print("secretvault: holding after stop until a line on stdin", file=sys.stderr,
                  flush=True)
            sys.stdin.readline()
        return code
    except VaultError as e:
        print(f"secretvault: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            print(f"secretvault: permission denied: {e.filename or e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    # run the imported module, not this __main__ copy: the CLI's parser builds
    # secretvault.vault.server.ServerConfig, and there must be one such class
    from secretvault.vault.server import main as _main

    sys.exit(_main())


__all__ = [
    "ServerConfig",
    "SocketBinding",
    "VaultServer",
    "create_server",
    "main",
    "run",
    "summary",
]
