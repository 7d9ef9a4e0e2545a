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

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2
from tests.integration._support import (
    ED25519,
    HMAC,
    Child,
    cleanup,
    code_of,
    short_dir,
    start,
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


ROTATOR = """
[identities.rotator]
secret_memory = "4 KiB"

[[identities.rotator.sockets]]
path = "{base}/rotator.sock"

[[identities.rotator.allow]]
operations = ["rotate_key"]
keys = ["shared/key"]
"""


@pytest.mark.root
@pytest.mark.memfd_secret
@needs_prlimit
def test_an_identity_that_may_only_rotate_cannot_spend_the_owners_secret_memory(
        base: str) -> None:
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write(ROTATOR.format(base=base))
    child = Child(base, ["--policy", policy], prefix=limited(65536))
    try:
        child.wait_ready()
        owner = stubs(child.socket)
        owner.create("shared/key", ED25519)
        rotator = stubs(os.path.join(base, "rotator.sock"))
        rotate = keys_pb2.RotateKeyRequest(name="shared/key")
        rotated = 0
        for _ in range(2000):
            try:
                rotator.keys.RotateKey(rotate)
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
                meta = dict(e.trailing_metadata() or ())
                break
            rotated += 1
        else:
            raise AssertionError("2000 rotations fit under 64 KiB of memlock?")
        # 4 KiB of Ed25519 keys (64 bytes each): 64 versions, then the quota
        # (version 1 is the owner's)
        assert rotated == 64, (rotated, details)
        assert code == C.RESOURCE_EXHAUSTED, details
        assert meta["secretvault-error"] == "QuotaExceeded", (meta, details)
        assert "'rotator'" in details and "secret_memory" in details, details
        assert "4096 bytes" in details, details
        # the owner still has the rest of memlock for keys of its own
        assert fill(owner, "owner") > 500
        stats = owner.get_stats()
        used = {q.identity: q for q in stats.identity_quotas}
        assert used["rotator"].secret_bytes == 4096
        assert used["rotator"].budget_bytes == 4096
        assert used["owner"].secret_bytes >= 64 * 500 and not used["owner"].HasField(
            "budget_bytes")
        assert stats.max_versions_per_key == 100
        # deleting versions (whoever does it) gives the rotator its budget back
        owner.keys.DeleteKeyVersion(keys_pb2.DeleteKeyVersionRequest(name="shared/key",
                                                                     version=2))
        assert rotator.keys.RotateKey(rotate).primary_version == 66
    finally:
        child.close()


def test_a_key_has_at_most_max_versions_per_key_versions(base: str) -> None:
    with start(base, max_versions_per_key=5) as s:
        v = stubs(s.config.vault.socket)
        v.create("k", ED25519)
        for _ in range(4):
            v.keys.RotateKey(keys_pb2.RotateKeyRequest(name="k"))
        code, details, name = code_of(v.keys.RotateKey, keys_pb2.RotateKeyRequest(name="k"))
        assert (code, name) == (C.FAILED_PRECONDITION, "TooManyVersions"), details
        assert "5 versions" in details and "delete" in details, details
        assert v.keys.GetKey(keys_pb2.GetKeyRequest(name="k")).primary_version == 5
        v.keys.DeleteKeyVersion(keys_pb2.DeleteKeyVersionRequest(name="k", version=1))
        assert v.keys.RotateKey(keys_pb2.RotateKeyRequest(name="k")).primary_version == 6
        assert v.get_stats().max_versions_per_key == 5


def test_usage_is_attributed_to_its_creator_across_restarts(base: str) -> None:
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write(ROTATOR.format(base=base))
    for attempt in range(2):
        with start(base, policy_file=policy) as s:
            owner = stubs(s.config.vault.socket)
            if attempt == 0:
                owner.create("shared/key", ED25519)
                rotator = stubs(os.path.join(base, "rotator.sock"))
                for _ in range(10):
                    rotator.keys.RotateKey(keys_pb2.RotateKeyRequest(name="shared/key"))
            used = {q.identity: q.secret_bytes for q in owner.get_stats().identity_quotas}
            # recomputed at start from who created each stored version
            assert used["rotator"] == 10 * 64 and used["owner"] == 64, used
