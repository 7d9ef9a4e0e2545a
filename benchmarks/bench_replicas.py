"""Replicas: replication lag and the cost of a create, PostgreSQL against SQLite, in one run.

    python -m benchmarks.bench_replicas [--quick] [--rounds N] [--seconds S] [--json]

One process tree: this process starts a private PostgreSQL server
(``tests/_pg.py``: initdb in a temporary directory, a private Unix socket,
fsync and synchronous_commit on), two ``secretvault serve`` replicas over one
database of it, and two ``serve`` processes over one SQLite store (the data
directory's, as workers on one host share it).  Every round runs every form:

* **replication lag**: a CreateKey acknowledged by one process, then GetKey
  on the other until it serves the key; the figure is changes replicated per
  second (one at a time), the latency columns the lag's p50 and p99.  The
  issue's bound is 1 s;
* **create**: CreateKey on one process, one in flight, over its Unix socket:
  the cost of an acknowledged (durably committed) create on each store;
* **the feed's counter row**, in this process on the same PostgreSQL
  database: ``PostgreSQLStore.create_key`` (the key row, the version row,
  the counter row updated first, the change row, NOTIFY: one transaction)
  against the same two inserts in one transaction without the feed — what
  numbering the feed with a row that serialises writers costs a create.

Figures are medians over rounds, ratios medians of per-round ratios
(``benchmarks/_measure.py``).  PostgreSQL commits over a socket to another
process and fsyncs its WAL; SQLite fsyncs its WAL in the server's own
process: the create ratio is the price of a store every host can share.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from benchmarks._measure import PeerMissing, Rate
from benchmarks._report import Report, Row, loadavg, machine
from benchmarks._rounds import Bench, add_round_options, process_cpu, rounds_and_seconds, run_bench
from benchmarks._rpc import ServerProcess, child_env, unix_channel
from secretvault.api._proto.secretvault.v1 import keys_pb2, keys_pb2_grpc

HMAC = keys_pb2.KEY_TYPE_HMAC_SHA256
BOUND_S = 1.0

LABELS = {
    "lag.pg": "replication lag, PostgreSQL (create on one replica, served by the other)",
    "lag.sqlite": "replication lag, SQLite (two processes over one store)",
    "create.pg": "CreateKey on a replica over PostgreSQL",
    "create.sqlite": "CreateKey on a server over SQLite",
    "store.feed": "PostgreSQLStore.create_key (with the feed's counter row)",
    "store.plain": "the same inserts in one transaction, without the feed",
}


class Node:
    """A ``serve`` child with its own socket; ``store`` None: its data directory's SQLite."""

    def __init__(self, base: str, *, data_dir: str, store: str | None, key_file: str | None,
                 env: dict[str, str]) -> None:
        menv, cwd = child_env()
        menv.update(env)
        menv.pop("SECRETVAULT_PASSPHRASE", None)
        self.socket = os.path.join(base, "vault.sock")
        argv = [sys.executable, "-m", "secretvault", "serve", "--socket", self.socket,
                "--data-dir", data_dir, "--audit-log", "/dev/null", "--grace", "1"]
        if store is not None:
            argv += ["--store", store]
        if key_file is not None:
            argv += ["--unseal-key-file", key_file]
        self.proc = ServerProcess(argv, name="secretvault serve", ready="secretvault is serving",
                                  env=menv, cwd=cwd)
        self.channel = unix_channel(self.socket)
        stub: Any = keys_pb2_grpc.KeyServiceStub  # generated: untyped
        self.keys = stub(self.channel)

    def create(self, name: str) -> None:
        self.keys.CreateKey(keys_pb2.CreateKeyRequest(name=name, type=HMAC), timeout=10)

    def has(self, name: str) -> bool:
        try:
            self.keys.GetKey(keys_pb2.GetKeyRequest(name=name), timeout=10)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def close(self) -> None:
        self.channel.close()
        self.proc.stop()


_names = itertools.count()


def _name(tag: str) -> str:
    return f"bench/{tag}/{os.getpid()}-{next(_names)}"


def lag_form(writer: Node, reader: Node) -> Callable[[list[int]], Rate]:
    """Changes replicated per second, one at a time; each one's lag in ``latencies``."""

    def make(latencies: list[int]) -> Rate:
        def rate(seconds: float) -> float:
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                name = _name("lag")
                writer.create(name)  # acknowledged: committed
                t0 = time.perf_counter_ns()
                while not reader.has(name):
                    if time.perf_counter_ns() - t0 > 10 * BOUND_S * 1e9:
                        raise AssertionError(f"{name} did not replicate in {10 * BOUND_S} s")
                latencies.append(time.perf_counter_ns() - t0)
                n += 1
            return n / (time.perf_counter() - start)

        return rate

    return make


def create_form(node: Node, tag: str) -> Callable[[list[int]], Rate]:
    def make(latencies: list[int]) -> Rate:
        def rate(seconds: float) -> float:
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                t0 = time.perf_counter_ns()
                node.create(_name(tag))
                latencies.append(time.perf_counter_ns() - t0)
                n += 1
            return n / (time.perf_counter() - start)

        return rate

    return make


def store_forms(url: str) -> tuple[Callable[[list[int]], Rate], Callable[[list[int]], Rate],
                                   Callable[[], None]]:
    """(with the feed, without it, close): the store's own create, in this process."""
    import psycopg

    from secretvault.vault.store_pg import PostgreSQLStore
    from secretvault.vault.store_protocol import KeyRecord, StaleFeed, VersionRecord

    store = PostgreSQLStore(url)
    store.position = store.feed_head()
    plain = store.connect()
    version = VersionRecord(1, 1.0, None, b"n" * 24, b"s" * 48)

    def record(name: str) -> KeyRecord:
        return KeyRecord(name, "hmac-sha256", 1.0, 1, 1, {}, row_mac=b"m" * 32)

    def timed(one: Callable[[str], None]) -> Callable[[list[int]], Rate]:
        def make(latencies: list[int]) -> Rate:
            def rate(seconds: float) -> float:
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    t0 = time.perf_counter_ns()
                    one(_name("store"))
                    latencies.append(time.perf_counter_ns() - t0)
                    n += 1
                return n / (time.perf_counter() - start)

            return rate

        return make

    def with_feed(name: str) -> None:
        try:
            store.create_key(record(name), version)
        except StaleFeed:  # the replicas' forms wrote since: as the keyring does, move on
            store.position = store.feed_head()
            store.create_key(record(name), version)

    def without_feed(name: str) -> None:
        with plain.transaction():
            plain.execute("INSERT INTO secretvault.keys (name, type, created, labels, "
                          "primary_version, min_decryption_version, row_mac) VALUES "
                          "(%s, 'hmac-sha256', 1.0, '{}', 1, 1, %s)", (name, b"m" * 32))
            plain.execute("INSERT INTO secretvault.key_versions (name, version, created, "
                          "public_key, nonce, sealed, created_by) VALUES "
                          "(%s, 1, 1.0, NULL, %s, %s, NULL)", (name, b"n" * 24, b"s" * 48))

    def close() -> None:
        with contextlib.suppress(psycopg.Error):
            plain.close()
        store.close()

    return timed(with_feed), timed(without_feed), close


@contextlib.contextmanager
def postgresql() -> Iterator[Any]:
    """A private PostgreSQL server (tests/_pg.py), or PeerMissing saying what is missing."""
    try:
        from tests import _pg
    except ImportError as e:  # run from outside a checkout
        raise PeerMissing(f"tests/_pg.py not importable ({e}): run from the repository") from e
    why = _pg.unavailable()
    if why is not None:
        raise PeerMissing(why)
    server = _pg.PgServer()
    try:
        yield server
    finally:
        server.close()


def build(bench: Bench, stack: contextlib.ExitStack) -> None:
    work = tempfile.mkdtemp(prefix="sv-bench-replicas-", dir="/tmp")
    stack.callback(shutil.rmtree, work, True)

    def node(tag: str, **kw: Any) -> Node:
        base = os.path.join(work, tag)
        os.makedirs(base, exist_ok=True)
        n = Node(base, **kw)
        stack.callback(n.close)
        return n

    # SQLite: two processes over one data directory's store
    sqlite_data = os.path.join(work, "sqlite-data")
    s1 = node("s1", data_dir=sqlite_data, store=None, key_file=None, env={})
    s2 = node("s2", data_dir=sqlite_data, store=None,
              key_file=os.path.join(sqlite_data, "unseal.key"), env={})
    try:
        pg = stack.enter_context(postgresql())
    except PeerMissing as e:
        for k in ("lag.pg", "create.pg", "store.feed", "store.plain"):
            bench.missing(k, LABELS[k], str(e))
    else:
        url = pg.create_database("bench_replicas")
        os.environ.update(pg.env())  # libpq's PGPASSWORD, for this process and the children
        a = node("a", data_dir=os.path.join(work, "a-data"), store=url, key_file=None,
                 env=pg.env())
        b = node("b", data_dir=os.path.join(work, "b-data"), store=url,
                 key_file=os.path.join(work, "a-data", "unseal.key"), env=pg.env())
        bench.add("lag.pg", LABELS["lag.pg"], lag_form(a, b), cpu=process_cpu(b.proc.pid))
    bench.add("lag.sqlite", LABELS["lag.sqlite"], lag_form(s1, s2),
              cpu=process_cpu(s2.proc.pid))
    if "lag.pg" in bench.measures and not bench.measures["lag.pg"].missing:
        bench.add("create.pg", LABELS["create.pg"], create_form(a, "pg"),
                  cpu=process_cpu(a.proc.pid))
    bench.add("create.sqlite", LABELS["create.sqlite"], create_form(s1, "sqlite"),
              cpu=process_cpu(s1.proc.pid))
    if "lag.pg" in bench.measures and not bench.measures["lag.pg"].missing:
        feed, plain, close = store_forms(url)
        stack.callback(close)
        bench.add("store.feed", LABELS["store.feed"], feed)
        bench.add("store.plain", LABELS["store.plain"], plain)


def rows(bench: Bench) -> list[Row]:
    ms = bench.measures
    return [
        Row("replication lag: a change acknowledged by one process, served by another",
            LABELS["lag.pg"], ms["lag.pg"], ms["lag.sqlite"], peer_label="SQLite, one host",
            note=f"the latency columns are the lag; the bound is {BOUND_S:g} s"),
        Row("create: one in flight, acknowledged once durable", LABELS["create.pg"],
            ms["create.pg"], ms["create.sqlite"], peer_label="SQLite (the default store)"),
        Row("the feed's cost inside a PostgreSQL create (this process, the same database)",
            LABELS["store.feed"], ms["store.feed"], ms["store.plain"],
            peer_label="without the feed",
            note="one writer: the counter row adds one statement; with many writers it "
                 "also makes them commit one after another"),
    ]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def lag_summary(bench: Bench) -> dict[str, dict[str, float]]:
    """p50/p99 of each lag form, in milliseconds (for the note and the JSON)."""
    out = {}
    for key in ("lag.pg", "lag.sqlite"):
        m = bench.measures.get(key)
        if m is not None and not m.missing and m.latencies_ns:
            out[key] = {"p50_ms": m.p50_us / 1000, "p99_ms": m.p99_us / 1000,
                        "samples": float(len(m.latencies_ns))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_replicas",
                                description=__doc__.split("\n\n")[0])
    add_round_options(p, rounds=5, quick_takes="about 15 s")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table to stderr)")
    args = p.parse_args(argv)
    rounds, seconds = rounds_and_seconds(p, args)
    started = time.monotonic()
    mach = machine()
    bench = run_bench(build, rounds, seconds, log)
    mach["loadavg_end"] = loadavg()
    lags = lag_summary(bench)
    for key, f in lags.items():
        log(f"{key}: lag p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms "
            f"({f['samples']:.0f} changes)")
    config = {"rounds": rounds, "seconds": seconds, "quick": args.quick,
              "elapsed_s": time.monotonic() - started, "lag": lags}
    report = Report(mach, config, bench.measures, rows(bench),
                    title="Replicas: PostgreSQL against SQLite")
    return report.emit(as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
