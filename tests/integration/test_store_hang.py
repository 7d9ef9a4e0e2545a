"""A PostgreSQL store that stops answering: changes fail in bounded time, crypto goes on.

A server that is stopped closes its connections, and the replicas notice at
once (``test_replicas.py``).  One that hangs (SIGSTOP here; a frozen VM, a
partition that drops packets without a reset) closes nothing: a call waits on
a socket that never answers.  Each replica must still refuse changes with
UNAVAILABLE, naming the store, within :data:`STORE_CALL_SECONDS` (plus the
connect timeout for a call that found the session already cut), keep serving
crypto from secret memory, say in health that KeyService is not serving, and
catch up from the feed once the server answers again, without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2

from secretvault.api._proto.secretvault.v1 import keys_pb2
from secretvault.vault.store_pg_session import CONNECT_TIMEOUT, STORE_CALL_SECONDS
from tests import _pg
from tests.integration._support import HMAC, code_of
from tests.integration.test_replicas import (
    BOUND,
    CRYPTO_SERVICE,
    KEY_SERVICE,
    Replica,
    _until,
    cluster,  # noqa: F401  (the fixture)
)

#: the longest a refused change may take: its own call's bound, then a new session's
LIMIT = STORE_CALL_SECONDS + CONNECT_TIMEOUT + 2


def test_a_hung_store_fails_changes_in_bounded_time(
        pg_server: _pg.PgServer, cluster: Callable[[int], list[Replica]]) -> None:  # noqa: F811
    a, b = cluster(2)
    a.stubs.create("before")
    _until(lambda: b.has("before"))
    frozen = pg_server.freeze()
    try:
        took = []
        for r, name in ((a, "frozen-a"), (b, "frozen-b"), (a, "frozen-a2")):
            t0 = time.monotonic()
            code, details, error = code_of(r.stubs.keys.CreateKey, keys_pb2.CreateKeyRequest(
                name=name, type=HMAC), timeout=LIMIT + 10)
            took.append(time.monotonic() - t0)
            assert code == grpc.StatusCode.UNAVAILABLE and error == "StoreUnavailable", details
            assert "postgresql://" in details and _pg.PASSWORD not in details
            assert took[-1] < LIMIT, f"{name}: refused after {took[-1]:.1f} s"
        # crypto from secret memory goes on, on both, while the store hangs
        for r in (a, b):
            assert r.stubs.sign("before").key_version == 1  # (an Ed25519 key)
            _until(lambda r=r: r.status(KEY_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING,
                   timeout=LIMIT)
            assert r.status(CRYPTO_SERVICE) == health_pb2.HealthCheckResponse.SERVING
    finally:
        pg_server.thaw(frozen)
    # once it answers again, changes resume on both and each sees the other's
    for r in (a, b):
        _until(lambda r=r: r.status(KEY_SERVICE) == health_pb2.HealthCheckResponse.SERVING,
               timeout=LIMIT)
    a.stubs.create("after-a")
    b.stubs.create("after-b")
    _until(lambda: b.has("after-a") and a.has("after-b"), timeout=BOUND)
    assert not any(r.has(n) for r in (a, b) for n in ("frozen-a", "frozen-b", "frozen-a2"))
    print(f"hung PostgreSQL (SIGSTOP): changes refused with UNAVAILABLE after "
          f"{', '.join(f'{t:.1f}' for t in took)} s (bound {LIMIT:.0f} s); crypto served "
          "throughout; both replicas caught up after SIGCONT")
