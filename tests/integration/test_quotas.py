"""Secret memory at its limit: what one identity may take, and what existing keys keep.

Real servers as child processes under a small RLIMIT_MEMLOCK (root without
CAP_IPC_LOCK is held to it like anyone else), real sockets, real policies.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from secretvault.api._proto.secretvault.v1 import crypto_pb2
from tests.integration._support import (
    ED25519,
    HMAC,
    Child,
    cleanup,
    short_dir,
    stubs,
)

C = grpc.StatusCode
needs_prlimit = pytest.mark.skipif(
    shutil.which("setpriv") is None or shutil.which("prlimit") is None,
    reason="needs setpriv and prlimit (util-linux) to drop CAP_IPC_LOCK and set "
    "RLIMIT_MEMLOCK for the child")


def limited(memlock: int) -> list[str]:
    """The prefix that runs the server without CAP_IPC_LOCK under ``memlock`` bytes."""
    return ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
            "prlimit", f"--memlock={memlock}:{memlock}"]


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


def fill(v: object, prefix: str, key_type: int = ED25519, most: int = 5000) -> int:
    """Create keys until secret memory refuses one; how many fit."""
    for i in range(most):
        try:
            v.create(f"{prefix}/{i}", key_type)  # type: ignore[attr-defined]
        except grpc.RpcError as e:
            meta = dict(e.trailing_metadata() or ())
            assert e.code() == C.RESOURCE_EXHAUSTED, e.details()
            assert meta["secretvault-error"] == "MemlockExceeded", (meta, e.details())
            return i
    raise AssertionError(f"{most} keys fit under the memlock limit?")


@pytest.mark.root
@pytest.mark.memfd_secret
@needs_prlimit
def test_macs_on_an_existing_key_all_succeed_at_the_memlock_limit(base: str) -> None:
    # 64 KiB of memlock, filled with keys to the last slot; then 64 callers
    # MAC large messages with a key made before: each needs HMAC state in
    # secret memory, which must have been reserved, not allocated on demand
    child = Child(base, prefix=limited(65536))  # 64 handler threads (the default)
    try:
        child.wait_ready()
        v = stubs(child.socket)
        v.create("mac/key", HMAC)
        assert fill(v, "fill") > 100
        message = os.urandom(1 << 20)
        results: Counter[str] = Counter()
        tags: set[bytes] = set()
        lock = threading.Lock()
        start = threading.Barrier(64)

        def caller() -> None:
            start.wait()
            for _ in range(30):
                try:
                    tag = v.crypto.Mac(crypto_pb2.MacRequest(key="mac/key", message=message),
                                       timeout=120).mac
                except grpc.RpcError as e:
                    with lock:
                        results[f"{e.code().name}: {e.details()}"] += 1
                else:
                    with lock:
                        results["ok"] += 1
                        tags.add(tag)

        threads = [threading.Thread(target=caller) for _ in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {"ok": 1920}, results
        assert len(tags) == 1
        # still at the limit: a new key is refused, the old ones keep working
        assert fill(v, "more") == 0
        assert v.sign("fill/0").key_version == 1
    finally:
        child.close()
