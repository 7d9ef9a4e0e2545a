"""What ``secretvault serve`` configures: :class:`ServerConfig`, its defaults and its ranges.

The field defaults are the one statement of each default: the ``serve``
command builds its options (and their help) from them.  :meth:`ServerConfig.validate`
is the one place each limit is checked; :func:`secretvault.vault.server.create_server`
calls it before anything is opened.

Nothing here loads grpc: the command imports this module before it sets
``GRPC_VERBOSITY``, which grpc reads once, when it is first imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from secretvault.api import limits
from secretvault.api.errors import InvalidArgument
from secretvault.vault.app import VaultConfig
from secretvault.vault.policy import SocketBinding

#: the most ``serve --workers``: each holds its own copy of every key
MAX_WORKER_PROCESSES = 256


@dataclass(frozen=True)
class WorkerSlot:
    """What makes a server one worker of ``serve --workers N`` (set by the supervisor).

    The worker binds each Unix listener at a private socket in ``directory``
    (0700, the supervisor's), named for its index and the listener's place in
    :func:`~secretvault.vault.listeners.unix_bindings`, and reports the public
    path in audit lines and stats; TCP it binds itself, on the same port as
    every other worker (SO_REUSEPORT).
    """

    index: int
    count: int
    directory: str
    supervisor_pid: int

    def socket(self, listener: int) -> str:
        """The private socket of this worker's ``listener``-th Unix listener."""
        return f"{self.directory}/w{self.index}-{listener}.sock"

    @property
    def metrics_socket(self) -> str:
        """Where this worker hands its metrics to the supervisor's endpoint."""
        return f"{self.directory}/w{self.index}-metrics.sock"


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
    max_message_bytes: int = limits.MAX_MESSAGE_BYTES
    #: most operations in one BatchRequest; RESOURCE_EXHAUSTED beyond
    max_batch_operations: int = limits.MAX_BATCH_OPERATIONS
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
    #: keep the capabilities the server was started with.  By default ``serve``
    #: drops every one (CAP_IPC_LOCK first, before the store is unsealed, so
    #: RLIMIT_MEMLOCK holds; CAP_CHOWN and CAP_NET_BIND_SERVICE, when a listener
    #: needs them, once every listener is bound); a program that calls
    #: ``create_server`` itself keeps its own
    keep_capabilities: bool = False
    #: when a tracer (a debugger, strace) attaches to any thread of the server:
    #: zero every secret page and exit 3.  Checked every ``tracer_check_seconds``
    #: by polling TracerPid, so it catches a tracer that lets the server run; one
    #: that stops the process at once (gdb -p) can read it until it resumes it
    stop_on_tracer: bool = False
    #: seconds between the checks for a tracer (the main thread's every check,
    #: every thread's every 10th); used with ``stop_on_tracer``
    tracer_check_seconds: float = 0.1
    #: versions one key may have; one more is refused (TooManyVersions,
    #: FAILED_PRECONDITION) until old ones are deleted.  Each holds a slot of
    #: secret memory: this bounds what rotating one key can take
    max_versions_per_key: int = 100
    #: connections one listener holds at once; one beyond it is closed as it is
    #: accepted.  Every listener shares one descriptor table, so this is what keeps
    #: the callers of one socket from taking the descriptors the owner's needs: it
    #: is lowered at start until every listener's cap plus ``reserved_descriptors``
    #: fits under RLIMIT_NOFILE (whose soft limit is first raised to the hard one)
    max_connections: int = 1024
    #: a connection with no call in progress for this long is closed (a GOAWAY:
    #: a client reconnects on its next call)
    connection_idle_seconds: float = 300.0
    #: descriptors kept out of every listener's share: the store, the audit log,
    #: the metrics endpoint and grpc's own
    reserved_descriptors: int = 64
    #: serve the SSH agent protocol to the owner on this Unix socket (``serve
    #: --ssh-agent`` alone: ``ssh-agent.sock`` beside the default socket); None:
    #: only the policy's ``agent_sockets``
    ssh_agent: str | None = None
    #: connections one identity holds at once over all its agent sockets, each
    #: served by a thread of its own; one more is closed as it is accepted
    ssh_agent_max_connections: int = 64
    #: an agent connection that sends nothing for this long is closed
    ssh_agent_idle_seconds: float = 300.0
    #: keys one identity may hold in the agent (added with ssh-add, memory only)
    ssh_agent_max_keys: int = 64
    #: processes serving (``serve --workers N``).  0: this process serves.  N >= 1:
    #: a supervisor starts N workers, each unsealing the store into its own secret
    #: memory (N copies of every key, N times the memlock), and every listener
    #: reaches all of them: TCP by SO_REUSEPORT, the Unix sockets through the
    #: supervisor's relay (``secretvault.vault.supervisor``)
    worker_processes: int = 0
    #: a worker that exits is restarted; one restarted more than this many times
    #: within ``worker_restart_window_seconds`` stops the whole server (exit 1)
    worker_restart_burst: int = 5
    worker_restart_window_seconds: float = 60.0
    #: set by the supervisor in each worker's own configuration, never by hand
    worker: WorkerSlot | None = None

    def validate(self) -> None:
        """Refuse a configuration that cannot serve, or a limit out of its range."""
        # loaded here, not with this module: every run of the command reads
        # these defaults to build its parser, and needs no prometheus_client
        from secretvault.vault.metrics import split_host_port

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
        if not 0.01 <= self.tracer_check_seconds <= 60:
            raise InvalidArgument("tracer_check_seconds must be between 0.01 and 60")
        if not 1 <= self.max_versions_per_key <= 1_000_000:
            raise InvalidArgument("max_versions_per_key must be between 1 and 1,000,000")
        if not 0 < self.stream_idle_seconds <= 86400:
            raise InvalidArgument("stream_idle_seconds must be more than 0 and at most a day")
        if not 1 <= self.max_connections <= 1 << 20:
            raise InvalidArgument("max_connections must be between 1 and 1,048,576")
        if not 0 < self.connection_idle_seconds <= 86400:
            raise InvalidArgument("connection_idle_seconds must be more than 0 and at most "
                                  "a day")
        if not 1 <= self.ssh_agent_max_connections <= 4096:
            raise InvalidArgument("ssh_agent_max_connections must be between 1 and 4,096")
        if not 0 < self.ssh_agent_idle_seconds <= 86400:
            raise InvalidArgument("ssh_agent_idle_seconds must be more than 0 and at most a day")
        if not 1 <= self.ssh_agent_max_keys <= 100_000:
            raise InvalidArgument("ssh_agent_max_keys must be between 1 and 100,000")
        if self.ssh_agent is not None and not self.ssh_agent.startswith("/"):
            raise InvalidArgument("the --ssh-agent socket must be an absolute path")
        if not 16 <= self.reserved_descriptors <= 1 << 20:
            raise InvalidArgument("reserved_descriptors must be between 16 and 1,048,576")
        if not 0 <= self.worker_processes <= MAX_WORKER_PROCESSES:
            raise InvalidArgument(f"worker_processes (--workers) must be between 0 and "
                                  f"{MAX_WORKER_PROCESSES}")
        if self.worker_restart_burst < 0 or self.worker_restart_window_seconds <= 0:
            raise InvalidArgument("worker_restart_burst must be >= 0 and "
                                  "worker_restart_window_seconds more than 0")
