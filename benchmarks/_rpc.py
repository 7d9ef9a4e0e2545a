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
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from benchmarks._measure import PeerMissing, Run
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


Check = Callable[[Any], None]


def unary_run(call: Any, request: Any, latencies: list[int]) -> Run:
    clock = time.perf_counter_ns

    def run(n: int) -> None:
        for _ in range(n):
            t0 = clock()
            call(request)
            latencies.append(clock() - t0)

    return run


def inflight_run(call: Any, request: Any, window: int, latencies: list[int]) -> Run:
    clock = time.perf_counter_ns

    def run(n: int) -> None:
        slots = threading.Semaphore(window)
        finished = threading.Event()
        lock = threading.Lock()
        left = [n]
        errors: list[BaseException] = []

        def done(fut: Any, t0: int) -> None:
            latencies.append(clock() - t0)
            exc = fut.exception()
            if exc is not None:
                errors.append(exc)
            slots.release()
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()

        for _ in range(n):
            slots.acquire()
            t0 = clock()
            fut = call.future(request)
            fut.add_done_callback(lambda f, t0=t0: done(f, t0))
        finished.wait()
        if errors:
            raise errors[0]

    return run


def stream_run(call: Any, request: Any, window: int, latencies: list[int]) -> Run:
    clock = time.perf_counter_ns

    def run(n: int) -> None:
        slots = threading.Semaphore(window)
        sent: collections.deque[int] = collections.deque()

        def requests() -> Iterator[Any]:
            for _ in range(n):
                slots.acquire()
                sent.append(clock())
                yield request

        got = 0
        for _ in call(iter(requests())):
            latencies.append(clock() - sent.popleft())
            got += 1
            slots.release()
        if got != n:
            raise RuntimeError(f"stream answered {got} of {n} messages")

    return run


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
