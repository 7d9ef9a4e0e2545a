"""``serve --workers``: one worker against two on this machine, in one run (issue 12).

    python -m benchmarks.bench_workers [--quick] [--rounds N] [--seconds S]
                                       [--connections C] [--json]

In one process tree and the same rounds:

* the crypto limit: Ed25519 sign in this process, key in secret memory, one
  core (``benchmarks/crypto_limit.py``);
* three real servers (``python -m secretvault serve``, ``vault_target.py``),
  each on its own store holding ``bench/sign`` made before it starts: one
  process (no ``--workers``), ``--workers 1`` and ``--workers 2``;
* against each, over the Unix socket (relayed by the supervisor to a
  worker) and over mutual TLS on 127.0.0.1 (each worker's own listener on
  the shared port): unary sign with 32 calls in flight, and batches of 100
  signs with 32 in flight.  The 32 calls are spread over ``--connections``
  connections (16; one gRPC connection stays with one worker, so a client
  reaches several workers through several connections), each call taking
  the connection with the fewest calls in flight (:class:`Spread`).

Figures are medians over rounds, ratios medians of per-round ratios.  The
targets: batches from 2 workers >= 1.5x one worker, and >= 0.9x of one
core's in-process libsodium rate.  Unary figures are reported only: this
process, the client, shares the two cores with the servers.  CPU/op is the
whole server's (the supervisor and every worker); the supervisor's own share
(its relay, on the Unix-socket forms) is printed under the table.  Before the
rounds, each connection asks GetStats which worker it reached, and the
spread is printed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from benchmarks._measure import Measure, PeerMissing, Rate, median
from benchmarks._report import Report, Row, Target, loadavg, machine
from benchmarks._rounds import (
    Bench,
    add_round_options,
    loop_form,
    process_cpu,
    process_tree_cpu,
    rounds_and_seconds,
)
from benchmarks._rpc import BATCH, CHANNEL_OPTIONS, TRANSPORTS, WINDOW, inflight_rate
from benchmarks._tls import TlsFiles, make_tls_files
from benchmarks.crypto_limit import crypto_forms

#: (key, label, --workers) of the servers, in table order
SERVERS: tuple[tuple[str, str, int], ...] = (
    ("one", "one process (no --workers)", 0),
    ("w1", "--workers 1", 1),
    ("w2", "--workers 2", 2),
)
FORMS: tuple[tuple[str, str, int], ...] = (
    ("unary32", f"unary sign, {WINDOW} in flight", 1),
    ("batch32", f"batch of {BATCH} signs, {WINDOW} in flight", BATCH),
)
CONNECTIONS = 16
#: a connection of its own per channel: grpc shares one between channels of one target
OWN_CONNECTION = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]


class Spread:
    """A multicallable over several connections: each call takes the connection
    with the fewest calls in flight (ties in turn), the client-side balancing
    gRPC calls ``least_request``.

    Why not plain turns: a connection stays with the worker that accepted it,
    and over TCP the kernel's SO_REUSEPORT hash, not the vault, picks that
    worker, so 16 connections can split 10 to 6.  Turns would still give every
    connection an equal share of the calls, and the worker with more
    connections would hold the window up; with the fewest in flight, each
    worker gets calls as fast as it answers them, whatever the split.
    """

    def __init__(self, calls: list[Any]) -> None:
        self._calls = calls
        self._inflight = [0] * len(calls)
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def _take(self) -> int:
        with self._lock:
            n = len(self._calls)
            start = next(self._turn) % n
            i = min(range(start, start + n), key=lambda j: self._inflight[j % n]) % n
            self._inflight[i] += 1
            return i

    def _give(self, i: int) -> None:
        with self._lock:
            self._inflight[i] -= 1

    def future(self, request: Any) -> Any:
        i = self._take()
        try:
            fut = self._calls[i].future(request)
        except BaseException:
            self._give(i)
            raise
        fut.add_done_callback(lambda _f: self._give(i))
        return fut

    def __call__(self, request: Any) -> Any:
        i = self._take()
        try:
            return self._calls[i](request)
        finally:
            self._give(i)


def _channels(server: Any, transport: str, tls: TlsFiles, n: int,
              stack: contextlib.ExitStack) -> list[grpc.Channel]:
    out = []
    for _ in range(n):
        if transport == "unix":
            ch = grpc.insecure_channel(f"unix:{server.socket}", options=OWN_CONNECTION)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.read("ca_cert"), private_key=tls.read("client_key"),
                certificate_chain=tls.read("client_cert"))
            ch = grpc.secure_channel(f"localhost:{server.port}", creds, options=OWN_CONNECTION)
        out.append(stack.enter_context(ch))
    return out


def _spread(channels: list[grpc.Channel]) -> str:
    """Which process each connection reached, as ``pid x count`` (GetStats on each)."""
    from secretvault.api._proto.secretvault.v1 import stats_pb2, stats_pb2_grpc

    stub: Any = stats_pb2_grpc.StatsServiceStub
    pids = collections.Counter(
        stub(ch).GetStats(stats_pb2.GetStatsRequest(), timeout=30).pid for ch in channels)
    return ", ".join(f"pid {pid}: {n}" for pid, n in sorted(pids.items()))


#: the supervisor's own CPU per operation (its relay), per Unix-socket form, per round
RELAY_CPU: dict[str, list[float]] = {}


def _relay_measured(key: str, rate: Rate, supervisor: Callable[[], float]) -> Rate:
    """``rate``, also noting the supervisor's CPU per operation (the relay's cost)."""

    def measured(seconds: float) -> float:
        c0, t0 = supervisor(), time.perf_counter()
        value = rate(seconds)
        ops = value * (time.perf_counter() - t0)
        if ops > 0:
            RELAY_CPU.setdefault(key, []).append((supervisor() - c0) / ops * 1e6)
        return value

    return measured


def _add_servers(bench: Bench, stack: contextlib.ExitStack, connections: int,
                 log: Callable[[str], None]) -> None:
    from benchmarks import vault_target

    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sv-bench-w-")))
    tls = make_tls_files(work)
    for key, label, workers in SERVERS:
        try:
            (work / key).mkdir()
            server = stack.enter_context(vault_target.VaultServer(
                work / key, tls, workers=workers, name=f"secretvault serve {label}"))
        except PeerMissing as e:
            for t, tname in TRANSPORTS:
                for fkey, flabel, _ in FORMS:
                    bench.missing(f"{key}.{t}.{fkey}", f"{label}, {flabel}, {tname}", str(e))
            continue
        cpu = process_tree_cpu(server.pid)
        supervisor = process_cpu(server.pid)
        for t, tname in TRANSPORTS:
            channels = _channels(server, t, tls, connections, stack)
            log(f"{label}, {tname}: {connections} connections reach {_spread(channels)}")
            stubs = [server.target(ch) for ch in channels]
            for fkey, flabel, ops in FORMS:
                if ops == 1:
                    call, request = Spread([s.unary for s in stubs]), stubs[0].unary_request
                else:
                    call, request = Spread([s.batch for s in stubs]), stubs[0].batch_request

                relayed = workers > 0 and t == "unix"

                def make(latencies: list[int], call: Any = call, request: Any = request,
                         ops: int = ops, form: str = f"{key}.{t}.{fkey}",
                         relayed: bool = relayed,
                         supervisor: Callable[[], float] = supervisor) -> Rate:
                    rate = inflight_rate(call, request, WINDOW, latencies, ops_per_call=ops)
                    return _relay_measured(form, rate, supervisor) if relayed else rate

                bench.add(f"{key}.{t}.{fkey}", f"{label}, {flabel}, {tname}", make, cpu)


def build_rows(ms: dict[str, Measure]) -> list[Row]:
    rows: list[Row] = []
    limit = ms["crypto.ed25519_sign.secret"]
    rows.append(Row("Crypto limit: in-process libsodium, 1 core", "Ed25519 sign, 64 B, key in "
                    "secret memory", limit))
    for fkey, flabel, ops in FORMS:
        batch = ops > 1
        sec = flabel + ("" if batch else " (reported only: the client shares the cores)")
        for t, tname in TRANSPORTS:
            w1, w2, one = ms[f"w1.{t}.{fkey}"], ms[f"w2.{t}.{fkey}"], ms[f"one.{t}.{fkey}"]
            rows.append(Row(sec, f"{tname}: 2 workers", w2, w1,
                            Target(f"batches, {tname}: 2 workers >= 1.5x one worker", 1.5)
                            if batch else None, peer_label="1 worker"))
            rows.append(Row(sec, f"{tname}: 2 workers", w2, limit,
                            Target(f"batches, {tname}: 2 workers >= 0.9x one core's "
                                   "in-process libsodium", 0.9) if batch else None,
                            peer_label="in-process libsodium, 1 core"))
            rows.append(Row(sec, f"{tname}: 1 worker", w1, one,
                            peer_label="one process (no --workers)"))
    return rows


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _crypto(bench: Bench) -> Iterator[None]:
    try:
        with crypto_forms() as (secret, _ordinary):
            sign = next(f for f in secret if f.key == "crypto.ed25519_sign.secret")
            bench.add(sign.key, sign.label, loop_form(sign.run))
            yield
    except PeerMissing as e:
        bench.missing("crypto.ed25519_sign.secret", "Ed25519 sign, key in secret memory", str(e))
        yield


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_workers",
                                description=__doc__.split("\n\n")[0])
    add_round_options(p, rounds=7, quick_takes="about a minute")
    p.add_argument("--connections", type=int, default=CONNECTIONS,
                   help=f"connections the {WINDOW} calls in flight are spread over "
                   f"(default {CONNECTIONS})")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table to stderr)")
    args = p.parse_args(argv)
    rounds, seconds = rounds_and_seconds(p, args)
    if args.connections < 1:
        p.error("--connections must be at least 1")
    started = time.monotonic()
    mach = machine()
    with contextlib.ExitStack() as stack:
        bench = Bench(log)
        log("setting up: the crypto limit, three servers")
        stack.enter_context(_crypto(bench))
        _add_servers(bench, stack, args.connections, log)
        log(f"{len(bench.measures)} forms x {rounds} rounds x {seconds} s")
        bench.run(rounds, seconds)
    mach["loadavg_end"] = loadavg()
    relay = {k: median(v) for k, v in RELAY_CPU.items()}
    config = {"rounds": rounds, "seconds": seconds, "quick": args.quick, "batch": BATCH,
              "window": WINDOW, "connections": args.connections,
              "elapsed_s": time.monotonic() - started, "relay_cpu_us_per_op": relay}
    report = Report(mach, config, bench.measures, build_rows(bench.measures),
                    title="secretvault serve --workers: 1 worker against 2")
    if args.json:
        report.write_json(sys.stdout)
        report.print(sys.stderr)
    else:
        report.print()
    for form, us in relay.items():
        print(f"  the supervisor's relay, {form}: {us:.1f} µs of CPU per operation (median "
              "over rounds; included in CPU/op above)", file=sys.stderr if args.json else None)
    return 1 if all(m.missing for m in bench.measures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
