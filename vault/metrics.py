"""Prometheus metrics, built from the same :class:`~secretvault.vault.stats.VaultStats` record.

Gauges and counters are produced at scrape time from one
:meth:`StatsSource.snapshot` (the record the gRPC ``Stats`` message is made
of), so a dashboard and ``secretvault stats`` always agree.  Latency
histograms are the one thing only Prometheus keeps.

The endpoint listens on loopback unless configured otherwise: the figures
are not secret, but they tell an observer how many keys of which type the
vault holds and how busy it is.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from secretvault.vault.stats import StatsSource, VaultStats

log = logging.getLogger("secretvault.server")

PREFIX = "secretvault"
#: RPC latencies run from tens of microseconds (a sign) to seconds (a batch)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


#: scrapes served at once; a connection beyond is closed as accepted.  The
#: endpoint has no identity, so without a cap any local user could take the
#: descriptors every listener shares (they come out of the reserve:
#: ServerConfig.reserved_descriptors)
MAX_CONNECTIONS = 8
#: a scrape connection that sends nothing for this long is closed
IDLE_SECONDS = 10.0


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_SECONDS  # the socket's timeout: an idle connection ends

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """A thread per scrape, at most :data:`MAX_CONNECTIONS` at once."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self._slots.acquire(blocking=False)  # False: closed at once

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _BoundedServer6(_BoundedServer):
    address_family = socket.AF_INET6


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def families(s: VaultStats) -> Iterator[Metric]:
    """Every metric family of one stats record."""
    m = s.memory
    info = _gauge("backend_info", "The secret-memory backend; protection=model means keys "
                  "are NOT in secret memory.", ("backend", "protection"))
    info.add_metric([m.backend, m.protection], 1)
    yield info
    for name, value, doc in (
        ("secret_memory_regions", m.regions, "Secret-memory regions mapped."),
        ("secret_memory_pages_mapped", m.pages_mapped, "Secret pages mapped (charged to "
         "RLIMIT_MEMLOCK at mmap time)."),
        ("secret_memory_pages_resident", m.pages_resident, "Secret pages faulted in (each "
         "removed from the kernel's direct map)."),
        ("secret_memory_locked_bytes", m.bytes_locked, "Bytes of secret memory charged to "
         "the memlock limit."),
        ("secret_memory_key_bytes", m.key_bytes, "Bytes in used slots: keys, and "
         "the vault's own (KEK, row-MAC key, import key, HMAC scratch)."),
        ("hibernation_inhibited", int(m.hibernation_inhibited), "1 while secret memory "
         "exists: the kernel refuses to hibernate."),
        ("memlock_locked_bytes", m.memlock.locked, "VmLck of the server process."),
        ("memlock_cap_ipc_lock", int(m.memlock.cap_ipc_lock), "1 if CAP_IPC_LOCK bypasses "
         "the memlock limit."),
    ):
        g = _gauge(name, doc)
        g.add_metric([], value)
        yield g

    if s.process is not None:
        e = s.process.exposure
        for name, value, doc in (
            ("tracer_pid", e.tracer_pid, "The pid of the tracer (debugger) attached to the "
             "server now; 0 when none."),
            ("ptrace_root_can_attach", int(e.root_can_attach), "1 unless "
             "kernel.yama.ptrace_scope=3: root can attach a debugger and read every key."),
            ("capabilities_effective", len(e.effective), "Capabilities in the server's "
             "effective set (serve drops every one unless --keep-capabilities)."),
        ):
            g = _gauge(name, doc)
            g.add_metric([], value)
            yield g

    slots = _gauge("slots", "Key slots by size class and state.", ("size", "state"))
    pages = _gauge("slot_pages", "Pages carved into each slot size class.", ("size",))
    for c in m.slots:
        slots.add_metric([str(c.size), "used"], c.slots_used)
        slots.add_metric([str(c.size), "free"], c.slots_free)
        pages.add_metric([str(c.size)], c.pages)
    yield slots
    yield pages

    limit = _gauge("memlock_limit_bytes", "RLIMIT_MEMLOCK (absent when unlimited).", ("kind",))
    for kind, value in (("soft", m.memlock.soft), ("hard", m.memlock.hard)):
        if value >= 0:
            limit.add_metric([kind], value)
    yield limit
    if m.memlock.headroom_bytes is not None:
        g = _gauge("memlock_headroom_bytes", "Bytes the memlock limit still allows.")
        g.add_metric([], m.memlock.headroom_bytes)
        yield g
    keys_left = _gauge("memlock_headroom_keys", "Keys of each type that still fit "
                       "(absent when unlimited).", ("type",))
    for key_type, n in m.memlock.headroom_keys:
        if n is not None:
            keys_left.add_metric([key_type], n)
    yield keys_left

    if m.memcg is not None:
        cg = m.memcg
        for field, doc in (
            ("usage", "Memory cgroup usage."),
            ("limit", "Memory cgroup limit."),
            ("file", "Memory cgroup page cache (secret pages are charged here)."),
            ("file_mapped", "Memory cgroup mapped page cache (includes secret pages)."),
            ("unevictable", "Memory cgroup unevictable memory (includes secret pages)."),
        ):
            value = getattr(cg, field)
            if value is not None:
                g = _gauge(f"memcg_{field}_bytes", doc, ("cgroup_version",))
                g.add_metric([str(cg.version)], value)
                yield g

    dm = m.direct_map
    splits = CounterMetricFamily(
        f"{PREFIX}_direct_map_splits", "Direct-map splits (kernel: since the server "
        "started, all kernel activity; model: the simulation's own).", labels=["level", "source"])
    splits.add_metric(["2", dm.source], dm.level2_splits)
    splits.add_metric(["3", dm.source], dm.level3_splits)
    yield splits
    mapped = _gauge("direct_map_bytes", "Bytes of the direct map at each page size "
                    "(DirectMap4k/2M/1G).", ("page_size", "source"))
    delta = _gauge("direct_map_delta_bytes", "Change of the direct map at each page size "
                   "since the server started.", ("page_size", "source"))
    for size, now, change in (("4k", dm.directmap_4k, dm.directmap_4k_delta),
                              ("2m", dm.directmap_2m, dm.directmap_2m_delta),
                              ("1g", dm.directmap_1g, dm.directmap_1g_delta)):
        mapped.add_metric([size, dm.source], now)
        delta.add_metric([size, dm.source], change)
    yield mapped
    yield delta
    regions = _gauge("direct_map_distinct_regions", "Distinct physical 2 MiB / 1 GiB regions "
                     "holding the vault's secret pages (root only).", ("size",))
    if dm.distinct_2m_regions is not None:
        regions.add_metric(["2m"], dm.distinct_2m_regions)
    if dm.distinct_1g_regions is not None:
        regions.add_metric(["1g"], dm.distinct_1g_regions)
    yield regions

    extra = _gauge("backend_extra", "Backend-specific figures (the models' pool waste, "
                   "failures...).", ("name",))
    for extra_name, figure in m.extra:
        extra.add_metric([extra_name], figure)
    yield extra

    keys = _gauge("keys", "Keys held, by type.", ("type",))
    for key_type, n in s.keys_by_type:
        keys.add_metric([key_type], n)
    yield keys

    if s.feed is not None:
        f = s.feed
        for gauge_name, doc, reading in (
                ("store_up", "1 while the key store can be reached (changes work), else 0.",
                 float(f.store_reachable)),
                ("feed_position", "The last change of the store's feed this process has.",
                 float(f.position)),
                ("feed_applied", "Changes applied from the feed since start (made by other "
                 "processes).", float(f.applied)),
                ("feed_last_lag_seconds", "The last applied change: from its commit to its "
                 "application here.", f.last_lag_seconds)):
            gauge = _gauge(gauge_name, doc)
            gauge.add_metric([], reading)
            yield gauge

    ops = CounterMetricFamily(f"{PREFIX}_operations", "Operations served (batch and stream "
                              "operations counted one by one).", labels=["operation", "result"])
    for o in s.operations:
        ops.add_metric([o.operation, o.result], o.count)
    yield ops


class _StatsCollector(Collector):
    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from families(self._source.snapshot())


class Metrics:
    """A private registry (several servers may live in one process, as in tests).

    A server's registry is built from its :class:`StatsSource`; the supervisor
    of ``serve --workers`` gives its own collector (:class:`WorkersCollector`),
    and has no latencies of its own (its workers' carry theirs).
    """

    def __init__(self, source: StatsSource | Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        own = isinstance(source, StatsSource)
        collector: Collector = _StatsCollector(source) if isinstance(source, StatsSource) \
            else source
        self.registry.register(collector)
        self._observers: dict[str, Callable[[float], None]] = {}
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._dump: socket.socket | None = None
        if not own:
            return
        self.latency = Histogram(
            f"{PREFIX}_operation_duration_seconds",
            "Time to serve each operation (unary call, or one operation of a stream; a "
            "batch is observed whole under operation=batch).",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # the histogram's child per operation: ``labels()`` takes a lock and
        # builds a key on every call, so each child is looked up once

    def observer(self, operation: str) -> Callable[[float], None]:
        """The function recording one latency (seconds) of ``operation``."""
        observe = self._observers.get(operation)
        if observe is None:
            observe = self._observers[operation] = self.latency.labels(operation).observe
        return observe

    def observe(self, operation: str, seconds: float) -> None:
        self.observer(operation)(seconds)

    def bind(self, address: str) -> tuple[str, int]:
        """Bind the HTTP endpoint on ``host:port``; returns the bound address.

        Serving starts with :meth:`start`: the server binds before it drops
        the capabilities binding needed, and starts the endpoint's thread
        after, so that thread (and every request thread it makes, which
        inherit its capabilities) holds none.
        """
        host, port = split_host_port(address)
        server = _BoundedServer6 if ":" in host else _BoundedServer
        self._http = make_server(host, port, make_wsgi_app(self.registry), server,
                                 handler_class=_QuietHandler)
        bound = self._http.server_address
        if not _is_loopback(host):
            log.warning("metrics listen on %s, not loopback: anyone who can reach it sees "
                        "key counts and load", address)
        return str(bound[0]), int(bound[1])

    def start(self) -> None:
        """Serve the endpoint :meth:`bind` bound, on a thread of its own."""
        assert self._http is not None, "bind first"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True,
                                        name="secretvault-metrics")
        self._thread.start()

    def serve_unix(self, path: str) -> None:
        """A worker's metrics for its supervisor: every connection to ``path`` (in the
        supervisor's 0700 directory) is sent the exposition text, then closed."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by this worker's previous life
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(MAX_CONNECTIONS)
        self._dump = sock
        threading.Thread(target=self._serve_dump, args=(sock,), daemon=True,
                         name="secretvault-metrics-dump").start()

    def _serve_dump(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(IDLE_SECONDS)
                with contextlib.suppress(OSError):
                    conn.sendall(generate_latest(self.registry))

    def close(self) -> None:
        if self._dump is not None:
            with contextlib.suppress(OSError):
                self._dump.shutdown(socket.SHUT_RDWR)
            self._dump.close()
            self._dump = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# --- serve --workers: the supervisor's endpoint ---------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker as the supervisor sees it, for its metrics."""

    index: int
    pid: int
    up: bool  # started and ready
    restarts: int
    #: the worker's metrics socket (WorkerSlot.metrics_socket)
    metrics_socket: str


def read_worker_metrics(path: str, timeout: float = 2.0) -> str:
    """The exposition text a worker's :meth:`Metrics.serve_unix` hands over."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


class WorkersCollector(Collector):
    """The workers' metrics, each sample labelled ``worker="I"``, and their states.

    Every worker holds its own copy of the keys, so each figure (secret
    memory, memlock, keys, operations) is per worker: ``sum without(worker)``
    is what the host holds.  A worker that is down, or does not answer within
    the timeout, is left out of that scrape (``secretvault_worker_up`` says 0).
    """

    def __init__(self, workers: Callable[[], list[WorkerState]], configured: int) -> None:
        self._workers = workers
        self._configured = configured

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.parser import text_string_to_metric_families

        states = self._workers()
        count = _gauge("workers", "Worker processes configured (serve --workers).")
        count.add_metric([], self._configured)
        yield count
        up = _gauge("worker_up", "1 while the worker is started and ready.", ("worker",))
        info = _gauge("worker_info", "The worker's process id now.", ("worker", "pid"))
        restarts = CounterMetricFamily(f"{PREFIX}_worker_restarts", "Times the supervisor "
                                       "restarted the worker.", labels=["worker"])
        merged: dict[str, Metric] = {}
        for w in states:
            index = str(w.index)
            restarts.add_metric([index], w.restarts)
            info.add_metric([index, str(w.pid)], 1)
            text = None
            if w.up:
                try:
                    text = read_worker_metrics(w.metrics_socket)
                except OSError as e:
                    log.warning("worker %d (pid %d) gave no metrics: %s", w.index, w.pid, e)
            up.add_metric([index], 1 if text is not None else 0)
            for family in text_string_to_metric_families(text or ""):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "worker": index},
                                    sample.value)
        yield up
        yield info
        yield restarts
        yield from merged.values()


def split_host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, or a bare ``PORT`` (then on loopback, 127.0.0.1)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT or PORT, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
