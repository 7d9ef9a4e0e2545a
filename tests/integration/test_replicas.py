"""Replicas: real ``secretvault serve`` processes over one real PostgreSQL store (and SQLite).

Each replica is a child process (``python -m secretvault serve --store URL``)
with its own data directory, socket and secret memory, and the same unseal
key file; the PostgreSQL server is the session's private one
(``tests/_pg.py``).  What is shown, with figures printed for the note:

* a change acknowledged by one replica is served by the others within 1 s
  (the lag's p50 and p99);
* a same-name create on two replicas at once: exactly one wins, the other
  gets ALREADY_EXISTS; concurrent rotations get distinct, ordered versions;
* an acknowledged delete: no replica serves the key after the bound, and each
  has given back (zeroed and freed) its slots;
* ``kill -9`` of a replica in the middle of creates, 20 rounds: no
  acknowledged key is lost, on any replica;
* PostgreSQL stopped and started under load: crypto keeps working, changes
  fail with UNAVAILABLE naming the store, health says KeyService is not
  serving, and every replica catches up from the feed without a restart;
* two processes over one SQLite store follow each other the same way.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from secretvault.api._proto.secretvault.v1 import keys_pb2
from tests import _pg
from tests.integration._support import (
    HMAC,
    REPO,
    Child,
    Stubs,
    cleanup,
    code_of,
    short_dir,
    stubs,
)

BOUND = 1.0
KEY_SERVICE = "secretvault.v1.KeyService"
CRYPTO_SERVICE = "secretvault.v1.CryptoService"


class Replica:
    """One ``serve`` child over ``store`` (None: its data directory's SQLite)."""

    def __init__(self, base: str, store: str | None, key_file: str | None,
                 env: dict[str, str], data_dir: str | None = None) -> None:
        args = ["--grace", "1"]
        if store is not None:
            args += ["--store", store]
        if key_file is not None:
            args += ["--unseal-key-file", key_file]
        if data_dir is not None:
            args += ["--data-dir", data_dir]
        self.base = base
        self.child = Child(base, args, env=env)
        self.child.wait_ready()
        self.stubs: Stubs = stubs(self.child.socket)
        self.health = health_pb2_grpc.HealthStub(self.stubs.channel)

    def status(self, service: str) -> int:
        return int(self.health.Check(health_pb2.HealthCheckRequest(service=service),
                                     timeout=5).status)

    def has(self, name: str) -> bool:
        try:
            self.stubs.keys.GetKey(keys_pb2.GetKeyRequest(name=name), timeout=5)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def primary(self, name: str) -> int:
        return int(self.stubs.keys.GetKey(keys_pb2.GetKeyRequest(name=name),
                                          timeout=5).primary_version)

    def names(self) -> set[str]:
        """Every key it serves (all pages of ListKeys)."""
        out: set[str] = set()
        token = ""
        while True:
            page = self.stubs.keys.ListKeys(keys_pb2.ListKeysRequest(page_token=token),
                                            timeout=10)
            out |= {k.name for k in page.keys}
            token = page.next_page_token
            if not token:
                return out

    def close(self) -> None:
        self.stubs.channel.close()
        self.child.close()


def _until(check: Callable[[], bool], timeout: float = BOUND) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.001)
    return time.monotonic() - start


def _figures(what: str, lags: list[float]) -> str:
    lags = sorted(lags)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    line = (f"{what}: n={len(lags)} p50={statistics.median(lags) * 1000:.1f} ms "
            f"p99={p99 * 1000:.1f} ms max={lags[-1] * 1000:.1f} ms")
    print(line)
    return line


@pytest.fixture
def cluster(pg_server: _pg.PgServer, pg_url: str) -> Iterator[Callable[[int], list[Replica]]]:
    """Start ``n`` replicas over a new database; all stopped at the end."""
    made: list[Replica] = []
    bases: list[str] = []
    env = pg_server.env()

    def start(n: int) -> list[Replica]:
        first_base = short_dir()
        bases.append(first_base)
        first = Replica(first_base, pg_url, None, env)  # makes the unseal key file
        made.append(first)
        key_file = os.path.join(first_base, "data", "unseal.key")
        for _ in range(n - 1):
            base = short_dir()
            bases.append(base)
            made.append(Replica(base, pg_url, key_file, env))
        return list(made)

    yield start
    for r in made:
        r.close()
    for b in bases:
        cleanup(b)


def test_replicas_serve_each_others_changes_within_the_bound(
        cluster: Callable[[int], list[Replica]]) -> None:
    a, b, c = cluster(3)
    lags: list[float] = []
    for i in range(40):
        writer, reader = (a, b) if i % 2 == 0 else (b, c)
        writer.stubs.create(f"k{i}")  # acknowledged: committed durably
        lags.append(_until(lambda: reader.has(f"k{i}")))
    _figures("replication lag (create -> served elsewhere, PostgreSQL)", lags)
    # the same key everywhere: a signature by one verifies on the others
    sig = a.stubs.sign("k0", b"m").signature
    for r in (b, c):
        from secretvault.api._proto.secretvault.v1 import crypto_pb2

        assert r.stubs.crypto.Verify(crypto_pb2.VerifyRequest(
            key="k0", message=b"m", signature=sig)).valid
    b.stubs.keys.RotateKey(keys_pb2.RotateKeyRequest(name="k0"))
    _until(lambda: a.primary("k0") == 2 and c.primary("k0") == 2)
    stats = c.stubs.get_stats()
    assert stats.HasField("feed") and stats.feed.store_reachable
    assert stats.feed.store.startswith("postgresql://") and _pg.PASSWORD not in str(stats)
    assert stats.feed.position == 41 and stats.feed.applied >= 20


def test_a_same_name_create_race_has_one_winner(cluster: Callable[[int], list[Replica]]) -> None:
    a, b = cluster(2)
    for i in range(25):
        results: dict[str, Any] = {}

        def create(r: Replica, tag: str, name: str = f"race{i}") -> None:
            try:
                r.stubs.create(name, HMAC)
                results[tag] = "ok"
            except grpc.RpcError as e:
                results[tag] = e.code()

        threads = [threading.Thread(target=create, args=(r, t)) for r, t in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(map(str, results.values())) == sorted(
            ["ok", str(grpc.StatusCode.ALREADY_EXISTS)]), results
    print("create race: 25 rounds, exactly one winner each")


def test_concurrent_rotations_get_distinct_ordered_versions(
        cluster: Callable[[int], list[Replica]]) -> None:
    a, b = cluster(2)
    a.stubs.create("r", HMAC)
    _until(lambda: b.has("r"))
    got: dict[str, list[int]] = {"a": [], "b": []}

    def rotate(r: Replica, tag: str) -> None:
        for _ in range(20):
            info = r.stubs.keys.RotateKey(keys_pb2.RotateKeyRequest(name="r"))
            got[tag].append(int(info.primary_version))

    threads = [threading.Thread(target=rotate, args=(r, t)) for r, t in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = got["a"] + got["b"]
    assert sorted(every) == list(range(2, 42)), "a version number was given twice or skipped"
    # each replica's own answers are in increasing order
    assert got["a"] == sorted(got["a"]) and got["b"] == sorted(got["b"])
    _until(lambda: a.primary("r") == b.primary("r") == 41)
    print(f"rotate race: 40 rotations on 2 replicas, versions 2..41 once each "
          f"(a got {len(got['a'])}, b got {len(got['b'])})")


def test_an_acknowledged_delete_is_zeroed_everywhere(
        cluster: Callable[[int], list[Replica]]) -> None:
    a, b = cluster(2)
    before = b.stubs.get_stats().key_bytes
    for i in range(10):
        a.stubs.create(f"d{i}")
    _until(lambda: b.has("d9"))
    held = b.stubs.get_stats().key_bytes
    assert held > before
    for i in range(10):
        a.stubs.keys.DeleteKey(keys_pb2.DeleteKeyRequest(name=f"d{i}"))
    lag = _until(lambda: not any(b.has(f"d{i}") for i in range(10)))
    code, _, name = code_of(b.stubs.sign, "d3")
    assert code == grpc.StatusCode.NOT_FOUND and name == "KeyNotFound"
    # the other replica's slots are given back (freed slots are zeroed: vault.backends)
    assert b.stubs.get_stats().key_bytes == before
    print(f"delete: 10 keys deleted on one replica, gone from the other in {lag * 1000:.1f} ms, "
          f"its key bytes {held} -> {before}")


def test_kill_9_mid_creates_loses_no_acknowledged_change(
        pg_server: _pg.PgServer, cluster: Callable[[int], list[Replica]]) -> None:
    a, b = cluster(2)
    key_file = os.path.join(a.base, "data", "unseal.key")
    store = a.child.proc.args[a.child.proc.args.index("--store") + 1]  # type: ignore[union-attr]
    acked: list[str] = []
    victim = b
    rng = random.Random(12)
    rounds = 20
    for rnd in range(rounds):
        stop = threading.Event()

        def creator(r: Replica = victim, rnd: int = rnd) -> None:
            i = 0
            while not stop.is_set():
                name = f"kill{rnd}-{i}"
                try:
                    r.stubs.keys.CreateKey(keys_pb2.CreateKeyRequest(
                        name=name, type=HMAC), timeout=5)
                except grpc.RpcError:
                    return  # the replica died under this call: not acknowledged
                acked.append(name)
                i += 1

        t = threading.Thread(target=creator)
        t.start()
        time.sleep(rng.uniform(0.05, 0.3))
        victim.child.proc.send_signal(signal.SIGKILL)
        victim.child.proc.wait()
        stop.set()
        t.join()
        victim.close()
        victim = Replica(victim.base, store, key_file, pg_server.env())
    try:
        assert len(acked) > rounds, "too few creates were acknowledged to mean anything"
        for r in (a, victim):
            _until(lambda r=r: r.has(acked[-1]), timeout=5)
            missing = [n for n in acked if not r.has(n)]
            assert missing == [], f"acknowledged but lost: {missing[:5]}"
    finally:
        victim.close()
    print(f"kill -9: {rounds} rounds, {len(acked)} acknowledged creates, none lost on either "
          "replica")


def test_postgresql_stopped_under_load(pg_server: _pg.PgServer,
                                       cluster: Callable[[int], list[Replica]]) -> None:
    a, b = cluster(2)
    for i in range(5):
        a.stubs.create(f"loaded{i}")
    _until(lambda: b.has("loaded4"))
    sign_failures: list[str] = []
    create_failures: list[tuple[Any, str, str | None]] = []
    created: list[str] = []
    signs = [0]
    stop = threading.Event()

    def load(r: Replica) -> None:
        while not stop.is_set():
            try:
                r.stubs.sign(f"loaded{signs[0] % 5}", b"m")
                signs[0] += 1
            except grpc.RpcError as e:
                sign_failures.append(f"{e.code()}: {e.details()}")

    def creates(r: Replica, tag: str) -> None:
        i = 0
        while not stop.is_set():
            name = f"load-{tag}-{i}"
            i += 1
            try:
                r.stubs.keys.CreateKey(keys_pb2.CreateKeyRequest(name=name, type=HMAC),
                                       timeout=10)
            except grpc.RpcError as e:
                meta = dict(e.trailing_metadata() or ())
                create_failures.append((e.code(), e.details() or "",
                                        meta.get("secretvault-error")))
                time.sleep(0.05)
                continue
            created.append(name)

    threads = [threading.Thread(target=load, args=(r,)) for r in (a, b)]
    threads += [threading.Thread(target=creates, args=(r, t)) for r, t in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        pg_server.stop()
        during = signs[0]
        # changes fail cleanly, naming the store; the key service says it is not serving
        code, details, name = code_of(a.stubs.create, "while-down")
        assert code == grpc.StatusCode.UNAVAILABLE and name == "StoreUnavailable", details
        assert "postgresql://" in details and _pg.PASSWORD not in details
        for r in (a, b):
            _until(lambda r=r: r.status(KEY_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING,
                   timeout=5)
            assert r.status(CRYPTO_SERVICE) == health_pb2.HealthCheckResponse.SERVING
            assert not r.stubs.get_stats().feed.store_reachable
        time.sleep(0.5)
        assert signs[0] > during, "crypto stopped while the store was down"
    finally:
        pg_server.start()
    # both come back without a restart; the creates resume
    for r in (a, b):
        _until(lambda r=r: r.status(KEY_SERVICE) == health_pb2.HealthCheckResponse.SERVING,
               timeout=10)
    before = len(created)
    _until(lambda: len(created) > before + 10, timeout=10)
    stop.set()
    for t in threads:
        t.join()
    assert not sign_failures, sign_failures[:3]
    assert create_failures, "no create failed while the store was down"
    unclean = [f for f in create_failures
               if f[0] != grpc.StatusCode.UNAVAILABLE or f[2] != "StoreUnavailable"]
    assert not unclean, unclean[:3]
    # no replica misses a change: every acknowledged create is on both, and both
    # agree (within the bound: the last creates may still be on their way)
    _until(lambda: a.names() == b.names(), timeout=BOUND)
    names = a.names()
    assert set(created) <= names and "while-down" not in names
    print(f"PostgreSQL stopped under load: {signs[0]} signs, none failed; {len(created)} "
          f"creates acknowledged, {len(create_failures)} refused with UNAVAILABLE "
          "(StoreUnavailable) while it was down; both replicas hold the same keys after")


def test_two_processes_over_one_sqlite_store_follow_each_other() -> None:
    base_a, base_b = short_dir(), short_dir()
    data = os.path.join(base_a, "data")
    a = b = None
    try:
        a = Replica(base_a, None, None, {})
        b = Replica(base_b, None, os.path.join(data, "unseal.key"), {}, data_dir=data)
        lags = []
        for i in range(20):
            writer, reader = (a, b) if i % 2 == 0 else (b, a)
            writer.stubs.create(f"s{i}")
            lags.append(_until(lambda: reader.has(f"s{i}")))
        _figures("replication lag (create -> served by the other process, SQLite)", lags)
        b.stubs.keys.DeleteKey(keys_pb2.DeleteKeyRequest(name="s0"))
        _until(lambda: not a.has("s0"))
    finally:
        for r in (a, b):
            if r is not None:
                r.close()
        cleanup(base_a)
        cleanup(base_b)


def start_failure(what: str, store: list[str], env: dict[str, str]) -> str:
    """The one line ``serve --store STORE...`` prints as it refuses to start (exit 2),
    checked to be one line, the usual error form, and without the password."""
    d = short_dir()
    try:
        child = Child(d, ["--store", *store], env=env)
        try:
            assert child.proc.wait(timeout=60) == 2, what
            lines = child.stderr().strip().splitlines()
        finally:
            child.close()
    finally:
        cleanup(d)
    assert len(lines) == 1, (what, lines)
    assert lines[0].startswith("secretvault: error: "), (what, lines)
    assert _pg.PASSWORD not in lines[0], (what, lines)
    return lines[0]


def test_each_start_failure_is_one_clear_line(pg_server: _pg.PgServer, pg_url: str) -> None:
    """Bad connection string, authentication failure, missing database, older
    schema, unreachable server: one line each, with the fix, never the password."""
    secret = _pg.PASSWORD
    older = pg_server.create_database("older_schema")
    base = short_dir()
    try:
        first = Replica(base, older, None, pg_server.env())  # makes the tables
        first.close()
        with pg_server.connect("older_schema") as conn:
            conn.execute(  # type: ignore[attr-defined]
                "UPDATE secretvault.schema_version SET version = 0")
        cases = {
            "bad string": ([f"host=x password={secret} garbage"], {},
                           "not a PostgreSQL connection string"),
            "authentication": ([pg_url.replace("vault@", f"vault:{secret}-wrong@")], {},
                               "authentication failed"),
            "missing database": ([pg_server.conninfo("no_such_db", password=True)], {},
                                 "the database no_such_db does not exist"),
            "older schema": ([older], pg_server.env(), "older than this vault's"),
            "unreachable": ([f"postgresql://vault:{secret}@/x?host=/nonexistent"], {},
                            "cannot reach the key store"),
        }
        for what, (store, env, expected) in cases.items():
            line = start_failure(what, store, env)
            assert expected in line and "(fix: " in line, (what, line)
            print(f"{what}: {line}")
    finally:
        cleanup(base)


def test_an_embedded_keyring_over_postgresql_follows_the_replicas(
        pg_server: _pg.PgServer, cluster: Callable[[int], list[Replica]]) -> None:
    """open_keyring(store=URL) in another process is one more replica: it serves what
    the servers create, and they serve what it creates."""
    import subprocess
    import sys

    (a,) = cluster(1)
    a.stubs.create("from-server")
    key_file = os.path.join(a.base, "data", "unseal.key")
    store = a.child.proc.args[a.child.proc.args.index("--store") + 1]  # type: ignore[union-attr]
    data = os.path.join(a.base, "embedded-data")
    code = (
        "import sys, time\n"
        "from secretvault.embedded import open_keyring, KeyNotFound\n"
        f"with open_keyring({data!r}, unseal_key_file={key_file!r}, store={store!r},\n"
        f"                  backend={a.child.proc.args[a.child.proc.args.index('--backend') + 1]!r}"  # type: ignore[union-attr]
        ") as r:\n"
        "    assert r.sign('from-server', b'm')\n"
        "    r.create_key('from-embedded', 'hmac-sha256')\n"
        "    print('created', flush=True)\n"
        "    deadline = time.monotonic() + 1\n"
        "    while True:\n"
        "        try:\n"
        "            r.get_key('after-embedded'); break\n"
        "        except KeyNotFound:\n"
        "            assert time.monotonic() < deadline, 'not followed within 1 s'\n"
        "            time.sleep(0.005)\n"
        "    print('followed', flush=True)\n")
    env = {**os.environ, **pg_server.env(), "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=env, cwd=str(REPO))
    try:
        assert p.stdout is not None and p.stdout.readline() == "created\n"
        _until(lambda: a.has("from-embedded"))
        a.stubs.create("after-embedded")
        assert p.stdout.readline() == "followed\n"
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
