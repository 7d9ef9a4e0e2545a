"""The server as a process: SIGTERM drains, memlock exhaustion, socket permissions.

These start ``python -m secretvault serve`` as a child, the way ``secretvault
serve`` and the container run it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2
from secretvault.backends import Region, SlotAllocator
from secretvault.vault.app import make_backend
from secretvault.vault.cli.serve import HOLD_AFTER_STOP_ENV
from secretvault.vault.keyring import Keyring
from secretvault.vault.sealing import UnsealSource, create_key_file
from secretvault.vault.store import SQLiteStore
from secretvault.vault.summary import summary
from tests._proc import secretmem_mappings, vm_locked_bytes
from tests.integration._support import (
    AEAD,
    ED25519,
    HMAC,
    REPO,
    SERVER_BACKEND,
    X25519,
    Child,
    cleanup,
    code_of,
    short_dir,
    start,
    stubs,
    vault_config,
)
from tests.unit.vault._support import raw

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


@pytest.mark.memfd_secret
def test_stop_zeroes_and_unmaps_all_secret_memory(base: str) -> None:
    with start(base) as s:
        v = stubs(s.config.vault.socket)
        for i in range(100):
            v.create(f"k{i}", ED25519)
        backend = s.vault.backend
        regions = [st.region for st in s.vault.allocator._regions]
        assert backend.statistics().regions == len(regions) >= 1
        assert _overlaps(secretmem_mappings(), regions)
        # each region's bytes at the moment the server's stop unmaps it
        unmapped: list[tuple[Region, bytes]] = []
        real_free = backend.free

        def free(region: Region) -> None:
            unmapped.append((region, raw(region.address, region.length)))
            real_free(region)

        backend.free = free  # type: ignore[method-assign]
    assert backend.statistics().regions == 0
    assert backend.statistics().pages_mapped == 0
    assert {r.address for r, _ in unmapped} >= {r.address for r in regions}
    for region, content in unmapped:
        assert content == bytes(region.length), f"region at {region.address:#x} not zeroed"
    # the kernel agrees: none of the server's secret mappings is left
    assert not _overlaps(secretmem_mappings(), regions)


def _overlaps(ranges: list[tuple[int, int]], regions: list[Region]) -> bool:
    return any(s < r.address + r.length and r.address < e for s, e in ranges
               for r in regions)


@pytest.mark.root
@pytest.mark.memfd_secret
def test_sigterm_unmaps_secret_memory_seen_from_outside(base: str) -> None:
    """A server child holding keys is stopped; before it exits (it waits on
    stdin, by the dev entry point's hold switch) its /proc/PID/maps has no
    secretmem mapping left and its VmLck has dropped by all of them.

    Root reads another process's maps and status even when it is not
    dumpable (the server makes itself so).
    """
    child = Child(base, env={HOLD_AFTER_STOP_ENV: "1"}, stdin=subprocess.PIPE)
    try:
        child.wait_ready()
        v = stubs(child.socket)
        for i in range(300):
            v.create(f"k{i}", (ED25519, X25519, AEAD, HMAC)[i % 4])
        pid = child.proc.pid
        held = secretmem_mappings(pid)
        held_bytes = sum(e - s for s, e in held)
        locked = vm_locked_bytes(pid)
        assert held and held_bytes >= 300 * 32
        assert locked >= held_bytes  # secretmem mappings are VM_LOCKED
        child.terminate()
        deadline = time.monotonic() + 30
        while "holding after stop" not in child.stderr() and time.monotonic() < deadline:
            assert child.proc.poll() is None, child.stderr()
            time.sleep(0.02)
        err = child.stderr()
        assert "secretvault: stopped; secret memory zeroed and unmapped" in err, err
        # the process is still there, stopped: look at it from outside
        assert child.proc.poll() is None
        assert secretmem_mappings(pid) == []
        assert vm_locked_bytes(pid) <= locked - held_bytes
        assert child.proc.stdin is not None
        child.proc.stdin.write(b"\n")
        child.proc.stdin.close()
        assert child.proc.wait(timeout=30) == 0
    finally:
        child.close()


@pytest.mark.root
@pytest.mark.memfd_secret
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


@pytest.mark.parametrize(
    "backend", [pytest.param("memfd_secret", marks=pytest.mark.memfd_secret), "page-model"]
)
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


def test_damaged_records_do_not_stop_the_server(base: str) -> None:
    """A damaged import key turns off wrapped import only; a damaged key row
    damages that key only; the summary says both."""
    with start(base) as s:
        v = stubs(s.config.vault.socket)
        v.create("good")
        v.create("bad-labels")
        store_path = s.config.vault.store_path
    db = sqlite3.connect(store_path)
    db.execute("UPDATE meta SET value = zeroblob(72) WHERE key = 'import_key'")
    db.execute("UPDATE keys SET labels = '{' WHERE name = 'bad-labels'")
    db.commit()
    db.close()
    with start(base) as s:
        v = stubs(s.config.vault.socket)
        code, details, name = code_of(v.keys.GetImportKey, keys_pb2.GetImportKeyRequest())
        assert (code, name) == (C.FAILED_PRECONDITION, "ImportKeyUnavailable")
        assert "the vault's sealed import key (the store's 'import_key' record) failed " \
               "authentication" in details
        code, details, name = code_of(v.keys.ImportKey, keys_pb2.ImportKeyRequest(
            name="imported", type=ED25519, wrapped_key=bytes(80)))
        assert (code, name) == (C.FAILED_PRECONDITION, "ImportKeyUnavailable")
        code, details, name = code_of(v.sign, "bad-labels")
        assert (code, name) == (C.DATA_LOSS, "IntegrityError")
        assert "key 'bad-labels' version 1: its stored record does not parse (its labels " \
               "are not valid JSON)" in details
        assert v.sign("good").key_version == 1
        text = summary(s)
        assert v.create("new").name == "new"
        assert "keys         2 loaded, 1 damaged" in text
        assert "damaged keys (their records do not open; using them fails with DATA_LOSS " \
               "naming the damage): 'bad-labels'" in text
        assert "!!! WARNING  wrapped import is unavailable (ImportKey and GetImportKey answer " \
               "FAILED_PRECONDITION): the vault's sealed import key" in text


@pytest.mark.parametrize("damage", ["middle", "truncated"])
def test_a_damaged_store_file_is_one_line_at_start(base: str, damage: str) -> None:
    """4 KiB overwritten in the middle of the file, or half of it cut off:
    ``serve`` exits 2 with one line that names the file and the fix, no traceback."""
    _populate(base, 300)
    path = os.path.join(base, "data", "keys.sqlite3")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if damage == "middle":
            f.seek(size // 2 // 4096 * 4096)
            f.write(bytes([0xA5]) * 4096)
        else:
            f.truncate(size // 2)
    child = Child(base)
    try:
        assert child.proc.wait(timeout=60) == 2
        lines = child.stderr().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("secretvault: error: StoreDamaged: "), lines
        assert path in lines[0]
        assert "(fix: the store is damaged or was tampered with: restore it from a " \
               "backup)" in lines[0]
    finally:
        child.close()


def test_a_key_row_with_a_null_name_is_listed_and_deleted_over_grpc(base: str) -> None:
    with start(base) as s:
        v = stubs(s.config.vault.socket)
        v.create("good")
        v.create("nameless")
        store_path = s.config.vault.store_path
    db = sqlite3.connect(store_path)
    (rowid,) = db.execute("SELECT rowid FROM keys WHERE name = 'nameless'").fetchone()
    db.execute("UPDATE keys SET name = NULL WHERE name = 'nameless'")
    db.commit()
    db.close()
    placeholder = f"damaged-row:{rowid}"
    with start(base) as s:
        v = stubs(s.config.vault.socket)
        listed = v.keys.ListKeys(keys_pb2.ListKeysRequest()).keys
        assert [k.name for k in listed] == [placeholder, "good"]
        assert "damaged keys (their records do not open; using them fails with DATA_LOSS " \
               f"naming the damage): {placeholder!r}" in summary(s)
        v.keys.DeleteKey(keys_pb2.DeleteKeyRequest(name=placeholder))
        assert [k.name for k in v.keys.ListKeys(keys_pb2.ListKeysRequest()).keys] == ["good"]
    with start(base) as s:
        assert [k.name for k in stubs(s.config.vault.socket).keys.ListKeys(
            keys_pb2.ListKeysRequest()).keys] == ["good"]


# --- the unseal progress -------------------------------------------------------------------

MANY = 1500  # more than secretvault.vault.progress.BAR_THRESHOLD


def _populate(base: str, n: int) -> None:
    """A store of ``n`` Ed25519 keys in ``base/data``, unsealed by its key file
    (what a Child started on ``base`` finds)."""
    data = os.path.join(base, "data")
    os.makedirs(data, mode=0o700)
    alloc = SlotAllocator(make_backend(vault_config(base)))  # the lane's, as the Child's
    try:
        create_key_file(os.path.join(data, "unseal.key"), alloc)
        store = SQLiteStore(os.path.join(data, "keys.sqlite3"))
        try:
            ring = Keyring.open(alloc, store,
                                UnsealSource(key_file=os.path.join(data, "unseal.key")))
            for i in range(n):
                ring.create(f"k{i:05d}", "ed25519")
            ring.close()
        finally:
            store.close()
    finally:
        alloc.close()


def test_a_log_gets_one_unseal_line_and_no_bar(base: str) -> None:
    _populate(base, MANY)
    child = Child(base)
    try:
        child.wait_ready()
        err = child.stderr()
        assert re.search(rf"secretvault: unsealed {MANY:,} key versions into secret memory "
                         r"in \d+\.\d\d s\n", err), err
        assert err.index("unsealed") < err.index("secretvault is serving")
        assert f"keys         {MANY} loaded" in err
        assert "unsealing keys into secret memory" not in err  # no bar in a file...
        assert "\x1b[" not in err  # ...and no terminal control sequences
    finally:
        child.close()


def test_a_terminal_gets_the_unseal_bar(base: str) -> None:
    """stderr on a pseudo-terminal: the served process draws rich's bar there."""
    _populate(base, MANY)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "SECRETVAULT_PASSPHRASE"}
    env.update(PYTHONPATH=str(REPO), TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "secretvault", "serve", "--backend", SERVER_BACKEND,
         "--socket", os.path.join(base, "run", "v.sock"), "--data-dir", os.path.join(base, "data")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env,
        cwd=str(REPO))
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"secretvault is serving" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal (it exited)
                    break
        text = seen.decode(errors="replace")
        assert "secretvault is serving" in text, text
        assert "unsealing keys into secret memory" in text
        assert f"{MANY}/{MANY}" in text  # the bar's last frame, full, before it goes
        assert "━" in text  # rich's bar glyph
        assert f"secretvault: unsealed {MANY:,} key versions into secret memory in " in text
    finally:
        proc.kill()
        proc.wait(timeout=10)
        os.close(master)
