"""``secretvault serve --workers N``: N processes over one store, one host's every core.

One Python process serves from one core at a time (the GIL), so a host with
more cores runs several.  The supervisor holds no key: it starts N workers
(``python -m secretvault.vault.cli.worker``), each of which opens the store
through :func:`~secretvault.vault.app.open_vault` (holding it shared,
:class:`~secretvault.vault.storelock.StoreLock`) and unseals every key into
its own secret memory, so the host holds N copies of each key and N times
the memlock (each worker's ``stats`` says what it holds).  Every listener
reaches every worker:

* **TCP with TLS**: each worker binds the same port with SO_REUSEPORT and
  does its own handshake; the kernel spreads connections among the
  listening sockets.  The supervisor binds the port first (bound, never
  listening: it receives no connection), so port 0 is resolved once and
  the port stays the server's while a worker restarts;
* **Unix sockets** (the default one and every per-identity one): grpcio
  cannot share one between processes, so the supervisor owns the public
  socket files and relays each connection to a worker's private socket for
  the same listener (:mod:`secretvault.vault.relay`);
* **metrics**: the supervisor serves the endpoint, with every worker's
  figures labelled by its index (:class:`~secretvault.vault.metrics.WorkersCollector`).

Lifecycle.  Worker 0 starts first (on a first start it creates the unseal
key file and the store, which no two processes may do at once); the others
then start together, and the supervisor says it is serving once every one
has unsealed and is listening.  Each worker gets SIGTERM when the
supervisor dies (PR_SET_PDEATHSIG, set by the worker itself), so none
outlives it.  A worker that exits is restarted, at most
``worker_restart_burst`` times within ``worker_restart_window_seconds``;
beyond that the whole server stops (exit 1).  A worker that stopped for a
tracer (``--stop-on-tracer``, status 3) is not restarted: every worker
stops, and the server exits 3.  SIGTERM or SIGINT stops
accepting on the public sockets, passes SIGTERM to every worker (each drains
its calls for ``grace_seconds``, then zeroes and unmaps its secret memory),
keeps relaying until the last has exited, and returns 0 when each did so.
Every worker is started from the supervisor's main thread: PR_SET_PDEATHSIG
fires when the *thread* that started a child ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from secretvault.api.errors import FailedPrecondition
from secretvault.vault.config import ServerConfig, WorkerSlot
from secretvault.vault.connections import plan
from secretvault.vault.listeners import listen_unix, remove_socket, unix_bindings
from secretvault.vault.metrics import Metrics, WorkersCollector, WorkerState, split_host_port
from secretvault.vault.policy import Policy
from secretvault.vault.relay import Relay

log = logging.getLogger("secretvault.supervisor")

#: the worker's entry point (a module: the worker is a fresh interpreter)
WORKER_MODULE = "secretvault.vault.cli.worker"
#: seconds a worker has to unseal and listen before the start fails
READY_SECONDS = 300.0
#: the status of a worker (and of the server) stopped by --stop-on-tracer
#: (secretvault.vault.server.EXIT_TRACED; that module loads grpc, this one does not)
EXIT_TRACED = 3
#: seconds beyond the grace period a stopping worker has before it is killed
STOP_MARGIN_SECONDS = 10.0


@dataclass(eq=False)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    summary: str = ""
    restarts: int = 0
    started: deque[float] = field(default_factory=deque)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


class Supervisor:
    """N workers, the public listeners, the relay; :meth:`run` until stopped."""

    def __init__(self, config: ServerConfig, *, after_bind: Callable[[], None] | None = None,
                 out: Callable[[str], None] | None = None) -> None:
        config.validate()
        self.config = config
        self.count = config.worker_processes
        self._after_bind = after_bind
        self._out = out or (lambda line: print(line, file=sys.stderr, flush=True))
        self.directory = tempfile.mkdtemp(prefix="secretvault-workers-")  # 0700
        self.workers = [_Worker(i) for i in range(self.count)]
        self.relay = Relay(config.max_connections)
        self.public: list[tuple[str, str]] = []  # (path, identity)
        self.tcp_port: int | None = None
        self.metrics_address: tuple[str, int] | None = None
        self._tcp: socket.socket | None = None
        self._metrics: Metrics | None = None
        self._stopping = threading.Event()
        self._start_stop: threading.Event | None = None
        self._worker_config = config

    # --- start ----------------------------------------------------------------------

    def start(self, stop: threading.Event | None = None) -> Supervisor:
        """Bind every public listener, start every worker, wait until each is ready
        (or ``stop`` is set: then :class:`FailedPrecondition`, every worker stopped)."""
        self._start_stop = stop
        try:
            self._bind()
            if self._after_bind is not None:
                self._after_bind()
            self._spawn(self.workers[0])
            self._wait_ready([self.workers[0]])
            for w in self.workers[1:]:
                self._spawn(w)
            self._wait_ready(self.workers[1:])
            self.relay.start()
            if self._metrics is not None:
                self._metrics.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _bind(self) -> None:
        c = self.config
        policy = Policy.load(c.policy_file) if c.policy_file else Policy()
        tcp = c.tcp
        if tcp is not None:
            tcp = self._reserve_port(tcp)
        slot = WorkerSlot(0, self.count, self.directory, os.getpid())
        for k, u in enumerate(unix_bindings(c, policy)):
            sock = listen_unix(u)
            self.public.append((u.path, u.identity))
            self.relay.add_listener(sock, f"unix:{u.path}",
                                    [replace(slot, index=i).socket(k) for i in range(self.count)])
        if self.public:
            # each relayed connection holds two of the supervisor's descriptors
            self.relay.max_connections = plan(c, 2 * len(self.public)).per_listener
        if c.metrics:
            self._metrics = Metrics(WorkersCollector(self.states, self.count))
            self.metrics_address = self._metrics.bind(c.metrics)
        # the workers' own: no metrics endpoint of theirs, the port resolved
        self._worker_config = replace(c, worker_processes=0, tcp=tcp)

    def _reserve_port(self, address: str) -> str:
        """Bind ``address`` with SO_REUSEPORT (never listening); HOST:PORT with the port."""
        host, port = split_host_port(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise FailedPrecondition(f"cannot listen on {address}: {e.strerror}") from None
        self._tcp = sock
        self.tcp_port = sock.getsockname()[1]
        return f"[{host}]:{self.tcp_port}" if family == socket.AF_INET6 else \
            f"{host}:{self.tcp_port}"

    def _spawn(self, w: _Worker) -> None:
        """Start worker ``w`` (from the main thread: see the module's docstring)."""
        slot = WorkerSlot(w.index, self.count, self.directory, os.getpid())
        w.ready.clear()
        w.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, close_fds=True)
        assert w.proc.stdin is not None
        with w.proc.stdin:
            # a pipe to our own child: the configuration, never a key (unseal
            # material is read by each worker from its file or environment)
            pickle.dump(replace(self._worker_config, worker=slot), w.proc.stdin)
        w.started.append(time.monotonic())
        threading.Thread(target=self._read, args=(w, w.proc), daemon=True,
                         name=f"secretvault-worker-{w.index}").start()

    def _read(self, w: _Worker, proc: subprocess.Popen[bytes]) -> None:
        """The worker's stdout: one JSON line when it is ready."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                said = json.loads(line)
            except ValueError:
                continue
            if isinstance(said, dict) and said.get("ready") == proc.pid:
                w.summary = str(said.get("summary", ""))
                w.ready.set()
                if not self._stopping.is_set():
                    self.relay.set_up(w.index, True)

    def _wait_ready(self, workers: list[_Worker]) -> None:
        deadline = time.monotonic() + READY_SECONDS
        for w in workers:
            while not w.ready.wait(0.05):
                assert w.proc is not None
                code = w.proc.poll()
                if code is not None:
                    raise FailedPrecondition(
                        f"worker {w.index} exited with status {code} before it was ready "
                        "(its error is above)")
                if time.monotonic() > deadline:
                    raise FailedPrecondition(f"worker {w.index} was not ready within "
                                             f"{READY_SECONDS:g} s")
                if self._start_stop is not None and self._start_stop.is_set():
                    raise FailedPrecondition("stopped while the workers were starting")

    # --- serving --------------------------------------------------------------------

    def states(self) -> list[WorkerState]:
        return [WorkerState(w.index, w.pid, w.ready.is_set(), w.restarts,
                            WorkerSlot(w.index, self.count, self.directory,
                                       os.getpid()).metrics_socket)
                for w in self.workers]

    def run(self, stop: threading.Event) -> int:
        """Restart workers that exit until ``stop`` is set (or one restarts too often,
        or saw a tracer), then stop.  0 when every worker stopped cleanly."""
        failed = 0
        while not stop.wait(0.2):
            failed = self._watch(stop)
            if failed:
                break
        codes = self.stop()
        return failed or (1 if any(codes) else 0)

    def _watch(self, stop: threading.Event) -> int:
        """Restart any worker that exited; else the server's exit status: 1 when one
        exits too often, EXIT_TRACED when one stopped for a tracer."""
        c = self.config
        for w in self.workers:
            assert w.proc is not None
            code = w.proc.poll()
            if code is None or stop.is_set():
                continue
            self.relay.set_up(w.index, False)
            if code == EXIT_TRACED:
                # it zeroed its keys because a tracer attached: restarting it would
                # unseal them again under the same tracer's eyes; the others stop too
                self._out(f"secretvault: error: worker {w.index} (pid {w.pid}) stopped for a "
                          "tracer; stopping every worker")
                return EXIT_TRACED
            now = time.monotonic()
            while w.started and now - w.started[0] > c.worker_restart_window_seconds:
                w.started.popleft()
            if len(w.started) > c.worker_restart_burst:
                self._out(f"secretvault: error: worker {w.index} exited (status {code}) "
                          f"{len(w.started)} times within {c.worker_restart_window_seconds:g} "
                          "s; stopping every worker")
                return 1
            self._out(f"secretvault: worker {w.index} (pid {w.pid}) exited with status "
                      f"{code}; restarting it")
            w.restarts += 1
            self._spawn(w)
        return 0

    def stop(self) -> list[int]:
        """Stop accepting, SIGTERM every worker, relay until they exit; their statuses."""
        if self._stopping.is_set():
            return []
        self._stopping.set()
        self.relay.close_listeners()
        for path, _ in self.public:
            remove_socket(path)
        for w in self.workers:
            self.relay.set_up(w.index, False)
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_seconds + STOP_MARGIN_SECONDS
        codes = []
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                codes.append(w.proc.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop in time: killed", w.index, w.pid)
                w.proc.kill()
                codes.append(w.proc.wait())
        self.relay.stop()
        if self._metrics is not None:
            self._metrics.close()
        if self._tcp is not None:
            self._tcp.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        return codes

    # --- the summary ------------------------------------------------------------------

    def summary(self) -> str:
        """Worker 0's start-up summary, with the workers and the supervisor's endpoint."""
        lines = self.workers[0].summary.splitlines() or ["secretvault is serving"]
        pids = ", ".join(str(w.pid) for w in self.workers)
        lines.insert(1, f"  workers      {self.count} processes (pids {pids}; supervisor "
                     f"{os.getpid()}), each with its own copy of every key in its own secret "
                     "memory: the figures below are one worker's")
        if self.metrics_address is not None:
            host, port = self.metrics_address
            lines.append(f"  metrics      http://{host}:{port}/metrics (every worker's, "
                         "labelled worker=\"I\")")
        return "\n".join(lines)
