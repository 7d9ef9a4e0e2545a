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
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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


class ServerProcess:
    """A server in a child process that prints ``READY <port>`` when up.

    The child's stdin is a pipe we hold: closing it (or our death) tells it
    to stop, so no server outlives the benchmark.
    """

    def __init__(self, argv: list[str], *, name: str, timeout: float = 60.0,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.name = name
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.port = self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        result: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("READY"):
                    result.append(line)
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        if not result:
            self.stop()
            err = self.stderr_tail()
            raise PeerMissing(f"{self.name} did not start within {timeout:.0f} s: {err}")
        parts = result[0].split()
        return int(parts[1]) if len(parts) > 1 else 0

    def stderr_tail(self) -> str:
        if self.proc is None or self.proc.stderr is None or self.proc.poll() is None:
            return "(still running)"
        lines = self.proc.stderr.read().strip().splitlines()
        return " | ".join(lines[-3:]) if lines else f"exit status {self.proc.returncode}"

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
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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


def start_echo(workdir: Path, tls_dir: Path) -> tuple[ServerProcess, str]:
    """The echo server on ``workdir/echo.sock`` and a TLS port; (process, socket)."""
    sock = str(workdir / "echo.sock")
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = ServerProcess(
        [sys.executable, "-m", "benchmarks.echo", "--unix", sock, "--tls-dir", str(tls_dir)],
        name="echo server",
        env=env,
        cwd=repo,
    )
    return proc, sock
