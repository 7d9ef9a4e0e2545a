"""The server as a process: SIGTERM drains, memlock exhaustion, socket permissions.

These start ``python -m vault.server`` as a child, the way ``secretvault
serve`` and the container run it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from clients._proto.secretvault.v1 import crypto_pb2, keys_pb2
from tests.integration._support import (
    ED25519,
    Child,
    cleanup,
    code_of,
    short_dir,
    start,
    stubs,
)

pytestmark = pytest.mark.memfd_secret
C = grpc.StatusCode


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


def test_sigterm_drains_in_flight_calls_then_exits_0(base: str) -> None:
    child = Child(base, ["--grace", "20"])
    try:
        child.wait_ready()
        v = stubs(child.socket)
        v.create("drain", ED25519)
        in_flight = threading.Barrier(5)
        signalled = threading.Event()
        answered: list[int] = []
        failures: list[BaseException] = []

        def ops() -> Iterator[Any]:
            yield crypto_pb2.Operation(id=0, sign=crypto_pb2.SignRequest(key="drain"))
            signalled.wait(20)
            for i in range(1, 501):
                yield crypto_pb2.Operation(id=i, sign=crypto_pb2.SignRequest(
                    key="drain", message=b"%d" % i))

        def client() -> None:
            try:
                stream = v.crypto.Stream(ops(), timeout=60)
                first = next(stream)  # the call is now in flight on the server
                in_flight.wait()
                rest = list(stream)
                ok = [r.id for r in [first, *rest] if r.WhichOneof("result") == "sign"]
                answered.append(len(ok))
            except BaseException as e:
                failures.append(e)
                in_flight.abort()

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        in_flight.wait(timeout=30)
        t0 = time.monotonic()
        child.terminate()
        deadline = time.monotonic() + 10
        while "draining" not in child.stderr() and time.monotonic() < deadline:
            time.sleep(0.02)
        signalled.set()  # the in-flight streams go on after SIGTERM
        for t in threads:
            t.join(timeout=60)
        assert failures == []
        assert answered == [501] * 4
        assert child.proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 25
        err = child.stderr()
        assert "SIGTERM: draining" in err
        assert "secret memory zeroed and unmapped" in err
        assert not os.path.exists(child.socket)
        # and nothing answers any more
        assert code_of(v.sign, "drain")[0] == C.UNAVAILABLE
    finally:
        child.close()


def test_new_calls_during_the_drain_are_unavailable(base: str) -> None:
    child = Child(base, ["--grace", "10"])
    try:
        child.wait_ready()
        v = stubs(child.socket)
        v.create("k", ED25519)
        # an open stream keeps the drain going until the client ends it
        gate = threading.Event()

        def ops() -> Iterator[Any]:
            yield crypto_pb2.Operation(id=1, sign=crypto_pb2.SignRequest(key="k"))
            gate.wait(20)
            yield crypto_pb2.Operation(id=2, sign=crypto_pb2.SignRequest(key="k"))

        stream = v.crypto.Stream(ops())
        assert next(stream).id == 1
        child.terminate()
        deadline = time.monotonic() + 10
        while "draining" not in child.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        code, _, _ = code_of(stubs(child.socket).sign, "k")
        assert code == C.UNAVAILABLE
        assert child.proc.poll() is None  # still draining: the stream is in flight
        gate.set()
        assert next(stream).id == 2  # the in-flight stream is still served
        assert list(stream) == []
        assert child.proc.wait(timeout=20) == 0
    finally:
        child.close()


def test_stop_zeroes_and_unmaps_all_secret_memory(base: str) -> None:
    with start(base) as s:
        v = stubs(s.config.vault.socket)
        for i in range(100):
            v.create(f"k{i}", ED25519)
        assert s.vault.backend.statistics().regions >= 1
    assert s.vault.backend.statistics().regions == 0
    assert s.vault.backend.statistics().pages_mapped == 0


@pytest.mark.root
@pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("prlimit") is None,
                    reason="needs setpriv and prlimit (util-linux) to drop CAP_IPC_LOCK "
                    "and set RLIMIT_MEMLOCK for the child")
def test_memlock_exhaustion_is_resource_exhausted_with_figures(base: str) -> None:
    # root without CAP_IPC_LOCK is held to RLIMIT_MEMLOCK like anyone else;
    # 16 KiB is 4 secret pages (the kernel charges the whole mapping at mmap)
    child = Child(base, prefix=["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
                                "prlimit", "--memlock=16384:16384"])
    try:
        child.wait_ready()
        v = stubs(child.socket)
        assert "memlock      16.0 KiB" in child.stderr()
        created = 0
        for i in range(2000):
            try:
                v.create(f"fill/{i}", ED25519)
                created += 1
            except grpc.RpcError as e:
                meta = dict(e.trailing_metadata() or ())
                assert e.code() == C.RESOURCE_EXHAUSTED, e.details()
                assert meta["secretvault-error"] == "MemlockExceeded"
                details = e.details() or ""
                break
        else:
            raise AssertionError("2000 keys fit in 16 KiB of memlock?")
        assert 60 <= created < 1000
        # the accounting figures are in the message, with the fix
        assert "RLIMIT_MEMLOCK soft 16384 bytes" in details, details
        assert re.search(r"already locked \d+ bytes", details), details
        assert "ulimit -l" in details
        stats = v.get_stats()
        assert stats.memlock.soft == 16384 and not stats.memlock.cap_ipc_lock
        assert stats.memlock.headroom_keys["ed25519"] == 0
        # the vault keeps serving, and a freed slot makes room again
        assert v.sign("fill/0").key_version == 1
        v.keys.DeleteKey(keys_pb2.DeleteKeyRequest(name="fill/1"))
        assert v.create("fill/again").name == "fill/again"
    finally:
        child.close()


def _connect_as_nobody(path: str) -> int:
    """0, or the errno a process running as nobody gets connecting to ``path``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
        except OSError as e:
            code = e.errno or 1
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.root
def test_the_kernel_keeps_other_users_off_the_sockets(base: str) -> None:
    os.chmod(base, 0o755)
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write(f'[identities.everyone]\n[[identities.everyone.sockets]]\n'
                f'path = "{base}/open/vault.sock"\nmode = "0666"\n'
                f'[[identities.everyone.allow]]\noperations = ["verify"]\nkeys = ["*"]\n')
    with start(base, policy_file=policy) as s:
        # the default socket (0600, in a 0700 directory): nobody cannot even reach it
        assert _connect_as_nobody(s.config.vault.socket) == errno.EACCES
        # a socket the policy opened to everyone: the kernel lets nobody connect
        assert _connect_as_nobody(f"{base}/open/vault.sock") == 0


@pytest.mark.parametrize("backend", ["memfd_secret", "page-model"])
def test_startup_summary(base: str, backend: str) -> None:
    child = Child(base, ["--backend", backend])
    try:
        child.wait_ready()
        child.terminate()
        assert child.proc.wait(timeout=30) == 0
        err = child.stderr()
        summary = err[err.index("secretvault is serving"):err.index("SIGTERM")]
        if backend == "memfd_secret":
            assert "keys live in secret memory" in summary
            assert "NOT in secret memory" not in summary
        else:
            assert "!!! WARNING  keys are NOT in secret memory" in summary
        assert re.search(r"memlock      (unlimited|[\d.]+ [KMG]iB)", summary)
        assert re.search(r"headroom     (unlimited|[\d,]+ ed25519)", summary)
        assert f"store        {base}/data/keys.sqlite3" in summary
        assert f"listening    unix:{child.socket} (identity: owner)" in summary
        # first start without unseal material: a key file, and a warning about it
        assert f"unseal key   created {base}/data/unseal.key (mode 0600)" in summary
        assert "production keep it elsewhere" in summary
        assert os.stat(f"{base}/data/unseal.key").st_mode & 0o777 == 0o600
    finally:
        child.close()


def test_sigint_stops_cleanly_too(base: str) -> None:
    import signal

    child = Child(base)
    try:
        child.wait_ready()
        stubs(child.socket).create("k", ED25519)
        child.proc.send_signal(signal.SIGINT)
        assert child.proc.wait(timeout=30) == 0
        assert "SIGINT: draining" in child.stderr()
        assert not os.path.exists(child.socket)
    finally:
        child.close()
