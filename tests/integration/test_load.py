"""Load: 32 concurrent clients for a minute against a server process.

Each client has its own channel (its own connection) and runs a mix of
every crypto operation, small batches, and key churn (create, use, delete),
so the allocator is exercised as well as the RPC path.  Pass: zero errors,
and no growth of secret memory (``pages_mapped`` after a warm-up vs at the
end).  Latency percentiles are printed, not asserted; throughput is
benchmarks/compare.py's job.

``SECRETVAULT_LOAD_SECONDS`` sets the duration (default 60),
``SECRETVAULT_LOAD_CLIENTS`` the number of clients (default 32).
"""

from __future__ import annotations

import collections
import os
import random
import statistics
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2
from secretvault.backends import _sodium
from tests.integration._support import (
    AEAD,
    ED25519,
    HMAC,
    Child,
    Stubs,
    cleanup,
    short_dir,
    stubs,
)

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("SECRETVAULT_LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("SECRETVAULT_LOAD_CLIENTS", "32"))
WARMUP = min(5.0, SECONDS / 6)


@pytest.fixture
def child() -> Iterator[Child]:
    base = short_dir()
    c = Child(base, ["--audit-log", os.path.join(base, "audit.log")])
    try:
        c.wait_ready()
        yield c
    finally:
        c.close()
        cleanup(base)


def client(v: Stubs, n: int, until: float, latencies: dict[str, list[float]],
           errors: list[str]) -> None:
    rng = random.Random(n)
    clock = time.perf_counter
    msg = rng.randbytes(64)
    churn = 0

    def timed(name: str, fn: object, *args: object) -> object:
        t0 = clock()
        out = fn(*args)  # type: ignore[operator]
        latencies[name].append(clock() - t0)
        return out

    while time.monotonic() < until:
        try:
            kind = rng.randrange(10)
            if kind < 3:
                r = timed("sign", v.crypto.Sign, crypto_pb2.SignRequest(key="load/ed",
                                                                        message=msg))
                ok = timed("verify", v.crypto.Verify, crypto_pb2.VerifyRequest(
                    key="load/ed", message=msg, signature=r.signature))  # type: ignore[attr-defined]
                assert ok.valid  # type: ignore[attr-defined]
            elif kind < 5:
                e = timed("encrypt", v.crypto.Encrypt, crypto_pb2.EncryptRequest(
                    key="load/aead", plaintext=msg))
                d = timed("decrypt", v.crypto.Decrypt, crypto_pb2.DecryptRequest(
                    key="load/aead", ciphertext=e.ciphertext))  # type: ignore[attr-defined]
                assert d.plaintext == msg  # type: ignore[attr-defined]
            elif kind < 7:
                m = timed("mac", v.crypto.Mac, crypto_pb2.MacRequest(key="load/mac",
                                                                     message=msg))
                assert timed("verify_mac", v.crypto.VerifyMac, crypto_pb2.VerifyMacRequest(
                    key="load/mac", message=msg, mac=m.mac)).valid  # type: ignore[attr-defined]
            elif kind < 9:
                ops = [crypto_pb2.Operation(id=i, sign=crypto_pb2.SignRequest(
                    key="load/ed", message=msg)) for i in range(50)]
                b = timed("batch50", v.crypto.Batch, crypto_pb2.BatchRequest(operations=ops))
                assert all(x.WhichOneof("result") == "sign"
                           for x in b.results)  # type: ignore[attr-defined]
            else:
                name = f"load/churn-{n}-{churn}"
                churn += 1
                timed("create_key", v.keys.CreateKey,
                      keys_pb2.CreateKeyRequest(name=name, type=ED25519))
                timed("sign", v.crypto.Sign, crypto_pb2.SignRequest(key=name, message=msg))
                timed("delete_key", v.keys.DeleteKey, keys_pb2.DeleteKeyRequest(name=name))
        except (grpc.RpcError, AssertionError) as e:
            errors.append(f"client {n}: {type(e).__name__}: {e}")


def run_clients(path: str, seconds: float, latencies: dict[str, list[float]],
                errors: list[str]) -> None:
    until = time.monotonic() + seconds
    channels = [grpc.insecure_channel(f"unix:{path}") for _ in range(CLIENTS)]
    threads = [threading.Thread(target=client, args=(Stubs(ch), i, until, latencies, errors))
               for i, ch in enumerate(channels)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    for ch in channels:
        ch.close()


def test_32_clients_no_errors_no_secret_memory_growth(
    child: Child, capsys: pytest.CaptureFixture[str]
) -> None:
    v = stubs(child.socket)
    v.create("load/ed", ED25519)
    v.create("load/aead", AEAD)
    v.create("load/mac", HMAC)
    warm: dict[str, list[float]] = collections.defaultdict(list)
    errors: list[str] = []
    run_clients(child.socket, WARMUP, warm, errors)
    assert errors == []
    before = v.get_stats()

    latencies: dict[str, list[float]] = collections.defaultdict(list)
    t0 = time.monotonic()
    run_clients(child.socket, SECONDS, latencies, errors)
    elapsed = time.monotonic() - t0
    after = v.get_stats()

    every = sorted(x for xs in latencies.values() for x in xs)
    with capsys.disabled():  # the figures are the point: show them on a passing run
        print(f"\n{CLIENTS} clients for {elapsed:.1f} s: {len(every)} calls, "
              f"{len(errors)} errors")
        print(f"{'call':<12}{'n':>9}{'p50 ms':>10}{'p99 ms':>10}")
        for name, xs in [*sorted(latencies.items()), ("all", every)]:
            q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else xs * 99
            print(f"{name:<12}{len(xs):>9}{q[49] * 1e3:>10.2f}{q[98] * 1e3:>10.2f}")
        print(f"secret memory: pages_mapped {before.pages_mapped} -> {after.pages_mapped}, "
              f"key_bytes {before.key_bytes} -> {after.key_bytes}, "
              f"regions {before.regions} -> {after.regions}")

    assert errors == [], "\n".join(errors[:10])
    assert len(every) > CLIENTS  # every client really ran
    assert after.pages_mapped <= before.pages_mapped
    # churned keys were all freed; what may remain is the keyring's pool of
    # HMAC scratch states (one per MAC running at once, so at most one per client)
    scratch = after.key_bytes - before.key_bytes
    state = _sodium.HMACSHA256_STATEBYTES
    assert 0 <= scratch <= CLIENTS * state and scratch % state == 0, scratch
    assert after.keys_by_type == before.keys_by_type
    assert child.proc.poll() is None
