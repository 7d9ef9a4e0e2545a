"""Client-side drivers shared by the echo ceiling and the vault forms.

Every RPC form is driven by the same code whatever the service behind it,
so a ratio between the vault and the echo server compares servers, not
client loops:

* **unary, 1 client**: one blocking call after another;
* **unary, N in flight**: ``multicallable.future`` with a window of N
  outstanding calls (a semaphore released from the completion callback);
* **stream, N in flight**: one bidirectional stream; the request iterator
  (which grpcio drains on its own thread) waits for a free slot, so at most
  N messages are unanswered at any time (N = 1 is ping-pong).

Each driver is a :data:`Rate`: it runs for a given number of seconds and
returns operations per second (a batch message counts ``ops_per_call``).
Running for a time, rather than a count, keeps the window full for the
whole measurement: there is one drain at the end, not one per chunk.
Every call's latency (request sent to response received) goes into the
measure's list, in nanoseconds.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from benchmarks._measure import PeerMissing, Rate
from benchmarks._tls import TlsFiles

#: the same channel options for every target, echo and vault
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.max_send_message_length", 16 << 20),
]


def unix_channel(path: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{path}", options=CHANNEL_OPTIONS)


def tls_channel(port: int, tls: TlsFiles) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.read("ca_cert"),
        private_key=tls.read("client_key"),
        certificate_chain=tls.read("client_cert"),
    )
    return grpc.secure_channel(f"localhost:{port}", creds, options=CHANNEL_OPTIONS)


def unary_rate(call: Any, request: Any, latencies: list[int], *, ops_per_call: int = 1) -> Rate:
    """One blocking call after another, for ``seconds``."""
    clock = time.perf_counter_ns

    def rate(seconds: float) -> float:
        start = clock()
        deadline = start + int(seconds * 1e9)
        calls = 0
        now = start
        while now < deadline:
            t0 = now
            call(request)
            now = clock()
            latencies.append(now - t0)
            calls += 1
        return calls * ops_per_call / ((now - start) / 1e9)

    return rate


def inflight_rate(
    call: Any, request: Any, window: int, latencies: list[int], *, ops_per_call: int = 1
) -> Rate:
    """``window`` calls always outstanding (``future`` + a semaphore), for ``seconds``.

    New calls stop at the deadline; the ones in flight are waited for and
    counted, and so is the time they take: the drain is part of the figure.
    """
    clock = time.perf_counter_ns

    def rate(seconds: float) -> float:
        slots = threading.Semaphore(window)
        lock = threading.Lock()
        all_done = threading.Condition(lock)
        state = {"outstanding": 0, "done": 0}
        errors: list[BaseException] = []

        def done(fut: Any, t0: int) -> None:
            latencies.append(clock() - t0)
            exc = fut.exception()
            if exc is not None:
                errors.append(exc)
            slots.release()
            with lock:
                state["outstanding"] -= 1
                state["done"] += 1
                if state["outstanding"] == 0:
                    all_done.notify_all()

        start = clock()
        deadline = start + int(seconds * 1e9)
        while clock() < deadline and not errors:
            slots.acquire()
            with lock:
                state["outstanding"] += 1
            t0 = clock()
            fut = call.future(request)
            fut.add_done_callback(lambda f, t0=t0: done(f, t0))
        with lock:
            while state["outstanding"]:
                all_done.wait()
        end = clock()
        if errors:
            raise errors[0]
        return state["done"] * ops_per_call / ((end - start) / 1e9)

    return rate


def stream_rate(
    call: Any, request: Any, window: int, latencies: list[int], *, ops_per_call: int = 1
) -> Rate:
    """One bidirectional stream with at most ``window`` unanswered messages."""
    clock = time.perf_counter_ns

    def rate(seconds: float) -> float:
        slots = threading.Semaphore(window)
        sent: collections.deque[int] = collections.deque()
        start = clock()
        deadline = start + int(seconds * 1e9)

        def requests() -> Iterator[Any]:
            # grpcio drains this iterator on its own thread
            while True:
                slots.acquire()
                now = clock()
                if now >= deadline:
                    return
                sent.append(now)
                yield request

        got = 0
        for _ in call(requests()):
            latencies.append(clock() - sent.popleft())
            got += 1
            slots.release()
        end = clock()
        if sent:
            raise RuntimeError(f"the stream ended with {len(sent)} messages unanswered")
        return got * ops_per_call / ((end - start) / 1e9)

    return rate


#: operations per batch message, and calls or messages in flight for the "32" forms
BATCH = 100
WINDOW = 32


@dataclass(frozen=True)
class RpcForm:
    key: str
    label: str
    kind: str  # "unary", "batch" or "stream"
    window: int


RPC_FORMS: tuple[RpcForm, ...] = (
    RpcForm("unary1", "unary, 1 client", "unary", 1),
    RpcForm("unary32", f"unary, {WINDOW} in flight", "unary", WINDOW),
    RpcForm("batch1", f"batch of {BATCH}, 1 client", "batch", 1),
    RpcForm("batch32", f"batch of {BATCH}, {WINDOW} in flight", "batch", WINDOW),
    RpcForm("stream1", "bidi stream, 1 in flight", "stream", 1),
    RpcForm("stream32", f"bidi stream, {WINDOW} in flight", "stream", WINDOW),
)
TRANSPORTS: tuple[tuple[str, str], ...] = (("unix", "Unix socket"),
                                          ("tls", "mutual TLS, 127.0.0.1"))


@dataclass(frozen=True)
class RpcTarget:
    """What the drivers call, per form kind: a multicallable and its request.

    The echo target is handed the vault's *serialized* requests, so both
    servers receive the same bytes.
    """

    unary: Any
    unary_request: Any
    batch: Any
    batch_request: Any
    stream: Any
    stream_request: Any

    def rate(self, form: RpcForm, latencies: list[int]) -> Rate:
        if form.kind == "unary":
            call, req, ops = self.unary, self.unary_request, 1
        elif form.kind == "batch":
            call, req, ops = self.batch, self.batch_request, BATCH
        else:
            return stream_rate(self.stream, self.stream_request, form.window, latencies)
        if form.window == 1:
            return unary_rate(call, req, latencies, ops_per_call=ops)
        return inflight_rate(call, req, form.window, latencies, ops_per_call=ops)


def echo_target(channel: Any, wire: dict[str, bytes]) -> RpcTarget:
    """The echo server, sent the vault's serialized requests as raw bytes."""
    from benchmarks import echo

    u = channel.unary_unary(echo.UNARY)
    return RpcTarget(u, wire["unary"], u, wire["batch"],
                     channel.stream_stream(echo.STREAM), wire["stream"])


class ServerProcess:
    """A server in a child process, ready when a line of its output matches.

    stdout and stderr are merged and drained continuously by a thread (a
    server that logs must never block on a full pipe); the last lines are
    kept for error messages.  The child's stdin is a pipe we hold: the echo
    server stops when it closes; any server gets SIGTERM on :meth:`stop`.
    """

    def __init__(self, argv: list[str], *, name: str, ready: str, timeout: float = 60.0,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.name = name
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._ready = threading.Event()
        self._pattern = re.compile(ready)
        self.port = 0
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(1.0)
                why = (f"exited with status {self.proc.returncode}"
                       if self.proc.poll() is not None else f"not ready within {timeout:.0f} s")
                self.stop()
                raise PeerMissing(f"{name} {why}: {self.tail()}")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._tail.append(line.rstrip())
            if not self._ready.is_set():
                m = self._pattern.search(line)
                if m:
                    self.port = int(m.group(1)) if m.groups() else 0
                    self._ready.set()

    def tail(self, lines: int = 4) -> str:
        return " | ".join(list(self._tail)[-lines:]) or "(no output)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reader.join(5.0)
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def child_env() -> tuple[dict[str, str], str]:
    """(environment, cwd) for a child Python that imports this repository."""
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env, repo


def start_echo(workdir: Path, tls_dir: Path) -> tuple[ServerProcess, str]:
    """The echo server on ``workdir/echo.sock`` and a TLS port; (process, socket)."""
    sock = str(workdir / "echo.sock")
    env, repo = child_env()
    proc = ServerProcess(
        [sys.executable, "-m", "benchmarks.echo", "--unix", sock, "--tls-dir", str(tls_dir)],
        name="echo server",
        ready=r"^READY (\d+)",
        env=env,
        cwd=repo,
    )
    return proc, sock
