"""Garbage in on the SSH agent socket: the listener stays up and signs for nobody.

Thousands of malformed messages -- random bytes, and valid messages of every
kind mutated (bytes flipped, cut short, spliced, inner lengths changed, the
type changed) -- go to a real server's agent socket, while a well-behaved
client signs on the owner's agent socket all along.  Every
answer must be a reply the protocol allows (or a closed connection), every
SIGN_RESPONSE must be a valid signature by a key this identity may use (never
by the vault key it may not), and the well-behaved client is never refused.
Then: idle connections are closed, an identity's connections are capped
without touching another's, lengths over 256 KiB are refused, and a key added
through the agent is nowhere in the server's readable memory (the residue
scan of ``test_residue.py``), before or after it was used thousands of times.

The seed is printed; set ``AGENT_INPUT_SEED`` to replay a run.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey, VerifyKey

from tests.integration._support import Child, cleanup, short_dir, start, stubs
from tests.security.test_residue import Keys, _check_scan_was_complete, _patterns, scan_process

ROUNDS = int(os.environ.get("AGENT_INPUT_ROUNDS", "3000"))
FAILURE, SUCCESS, IDENTITIES, SIGN_RESPONSE, EXT_FAILURE = 5, 6, 12, 14, 28
ALLOWED_REPLIES = {FAILURE, SUCCESS, IDENTITIES, SIGN_RESPONSE, EXT_FAILURE}
MAX = 256 * 1024

POLICY = """
[identities.fuzz]
[[identities.fuzz.agent_sockets]]
path = "{base}/fuzz/agent.sock"
[[identities.fuzz.allow]]
operations = ["sign"]
keys = ["fz/*"]
[[identities.fuzz.allow]]
operations = ["ssh_add_key", "ssh_remove_key"]

[identities.capped]
[[identities.capped.agent_sockets]]
path = "{base}/capped/agent.sock"
"""


def s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def frame(kind: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def blob(public: bytes) -> bytes:
    return s(b"ssh-ed25519") + s(public)


def add_body(key: SigningKey, comment: bytes = b"fuzz", constraints: bytes = b"") -> bytes:
    pk = bytes(key.verify_key)
    return s(b"ssh-ed25519") + s(pk) + s(bytes(key) + pk) + s(comment) + constraints


class Conn:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def reply(self) -> tuple[int, bytes] | None:
        head = self.recv_exact(4)
        if head is None:
            return None
        (n,) = struct.unpack(">I", head)
        assert 1 <= n <= MAX, f"the agent sent a reply of {n} bytes"
        body = self.recv_exact(n)
        assert body is not None, "the agent closed in the middle of its reply"
        return body[0], body[1:]

    def ask(self, data: bytes) -> tuple[int, bytes] | None:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def sign(conn: Conn, public: bytes, data: bytes) -> bytes | None:
    got = conn.ask(frame(13, s(blob(public)) + s(data) + b"\0\0\0\0"))
    if got is None or got[0] != SIGN_RESPONSE:
        return None
    return _signature(got[1])


def _signature(body: bytes) -> bytes:
    (n,) = struct.unpack_from(">I", body)
    sig_blob = body[4:4 + n]
    (k,) = struct.unpack_from(">I", sig_blob)
    assert sig_blob[4:4 + k] == b"ssh-ed25519"
    (m,) = struct.unpack_from(">I", sig_blob, 4 + k)
    return sig_blob[8 + k:8 + k + m]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    how = rng.randrange(7)
    if how == 0 and b:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == 1:  # cut short
        b = b[:rng.randrange(len(b) + 1)]
    elif how == 2:  # extend with garbage
        b += rng.randbytes(rng.randint(1, 64))
    elif how == 3 and len(b) >= 4:  # an inner length changed
        at = rng.randrange(len(b) - 3)
        b[at:at + 4] = struct.pack(">I", rng.choice(
            [0, 1, 0xFFFFFFFF, 0x7FFFFFFF, MAX, rng.randrange(1 << 16)]))
    elif how == 4 and b:  # splice in a part of itself
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b = b[:i] + b[j:] + b[i:j]
    elif how == 5:  # random bytes of the same length
        b = bytearray(rng.randbytes(len(b)))
    return bytes(b)


@pytest.fixture
def agent_server() -> Iterator[tuple[str, object]]:
    base = short_dir()
    policy = Path(base) / "policy.toml"
    policy.write_text(POLICY.format(base=base))
    srv = start(base, policy_file=str(policy), ssh_agent_idle_seconds=1.0,
                ssh_agent_max_connections=8, ssh_agent=f"{base}/run/agent.sock")
    try:
        vault = stubs(srv.config.vault.socket)
        vault.create("fz/ok")
        vault.create("secret")
        yield base, srv
    finally:
        srv.stop()
        cleanup(base)


def test_thousands_of_malformed_messages(agent_server: tuple[str, object]) -> None:
    base, srv = agent_server
    path = f"{base}/fuzz/agent.sock"
    keyring = srv.vault.keyring  # type: ignore[attr-defined]
    allowed = keyring.public_key("fz/ok")
    forbidden = keyring.public_key("secret")
    added = SigningKey.generate()
    seed = int(os.environ.get("AGENT_INPUT_SEED", str(random.randrange(1 << 32))))
    print(f"AGENT_INPUT_SEED={seed}")
    rng = random.Random(seed)

    # a well-behaved client on the owner's agent socket, all along (the fuzzer's
    # own identity may lock its agent: a valid LOCK is among the mutations)
    stop = threading.Event()
    good: list[bool] = []

    def behave() -> None:
        conn = Conn(f"{base}/run/agent.sock")
        try:
            while not stop.is_set():
                sig = sign(conn, allowed, b"good")
                good.append(sig is not None)
                VerifyKey(allowed).verify(b"good", sig or b"\0" * 64)
                time.sleep(0.002)
        finally:
            conn.close()

    watcher = threading.Thread(target=behave)
    watcher.start()
    templates = [
        frame(11),
        frame(13, s(blob(allowed)) + s(b"data") + b"\0\0\0\0"),
        frame(13, s(blob(forbidden)) + s(b"data") + b"\0\0\0\0"),
        frame(13, s(blob(bytes(added.verify_key))) + s(b"data") + b"\0\0\0\0"),
        frame(17, add_body(added)),
        frame(25, add_body(added, constraints=b"\x01" + struct.pack(">I", 600))),
        frame(25, add_body(added, constraints=b"\x02")),
        frame(18, s(blob(bytes(added.verify_key)))),
        frame(19),
        frame(22, s(b"lock pass")),
        frame(23, s(b"lock pass")),
        frame(27, s(b"session-bind@openssh.com") + s(blob(allowed)) + s(b"\1" * 32)
              + s(s(b"ssh-ed25519") + s(b"\0" * 64)) + b"\0"),
        frame(27, s(b"query")),
        frame(20, s(b"reader") + s(b"1234")),
    ]
    may_sign = {allowed, bytes(added.verify_key)}
    signatures = closed = 0
    lock_pass = b"lock pass"
    conn = Conn(path)
    try:
        for i in range(ROUNDS):
            if i % 50 == 0:  # an unlocked, known state now and then
                conn.ask(frame(23, s(lock_pass)))
            template = rng.choice(templates)
            if rng.random() < 0.1:
                # not even a frame, or a frame whose outer length is wrong: sent,
                # the write side shut; every reply until the agent closes
                data = rng.randbytes(rng.randint(0, 300)) if rng.random() < 0.5 \
                    else mutate(rng, template)
                closed += _send_and_drain(conn, data)
                conn = Conn(path)
                continue
            inner = template[4:] if rng.random() < 0.1 else mutate(rng, template[4:])
            if not inner:
                inner = b"\x0b"
            if rng.random() < 0.05:
                inner = bytes([rng.randrange(256)]) + inner[1:]  # any type
            data = struct.pack(">I", len(inner)) + inner
            try:
                got = conn.ask(data)
            except (TimeoutError, ConnectionError, BrokenPipeError):
                got = None
            if got is None:
                closed += 1
                conn.close()
                conn = Conn(path)
                continue
            kind, body = got
            assert kind in ALLOWED_REPLIES, (i, kind)
            if kind == SUCCESS and data[4] == 22:  # locked, with this passphrase
                (n,) = struct.unpack_from(">I", data, 5)
                lock_pass = data[9:9 + n]
            if kind == SIGN_RESPONSE:
                request = data[5:]
                (n,) = struct.unpack_from(">I", request)
                public = request[4 + n - 32:4 + n]
                assert public in may_sign, f"round {i}: signed with a key it may not use"
                (m,) = struct.unpack_from(">I", request, 4 + n)
                VerifyKey(public).verify(request[8 + n:8 + n + m], _signature(body))
                signatures += 1
    finally:
        conn.close()
        stop.set()
        watcher.join()
    assert good and all(good), "the well-behaved client was refused"
    assert signatures > 0 and closed > 0  # both paths were exercised
    # the listener is up: a new connection lists and signs
    fresh = Conn(path)
    try:
        fresh.ask(frame(23, s(lock_pass)))
        assert (fresh.ask(frame(11)) or (0,))[0] == IDENTITIES
        with srv.agent.service.views.view("fuzz") as view:  # type: ignore[attr-defined]
            # a mutated LOCK may have locked it with a passphrase the fuzzer never
            # saw answered (a frame sent with its write side shut)
            locked = view.locked
        assert locked or sign(fresh, allowed, b"after") is not None
        assert sign(fresh, forbidden, b"after") is None
    finally:
        fresh.close()
    lines = [json.loads(line) for line in Path(base, "audit.log").read_text().splitlines()]
    signs = [r for r in lines if r["operation"] == "ssh_sign"]
    assert not [r for r in signs if r["key"] == "secret" and r["result"] == "ok"]
    assert any(r["key"] == "secret" and r["result"] == "PERMISSION_DENIED" for r in signs)
    assert stubs(srv.config.vault.socket).sign("fz/ok").signature  # type: ignore[attr-defined]


def _send_and_drain(conn: Conn, data: bytes) -> int:
    """Send ``data``, shut the write side, read replies until the agent closes (1)."""
    try:
        conn.sock.sendall(data)
        conn.sock.shutdown(socket.SHUT_WR)
        while True:
            got = conn.reply()
            if got is None:
                break
            assert got[0] in ALLOWED_REPLIES, got
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        conn.close()
    return 1


def _closed(conn: Conn) -> bool:
    """Whether the agent closed the connection (a reset too: it left bytes unread)."""
    try:
        return conn.sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_lengths_over_256_kib_are_refused_and_the_stream_closed(
        agent_server: tuple[str, object]) -> None:
    base, _ = agent_server
    conn = Conn(f"{base}/fuzz/agent.sock")
    try:
        # the largest message allowed, of a type nobody knows: FAILURE, and it goes on
        assert conn.ask(struct.pack(">IB", MAX, 99) + b"\0" * (MAX - 1)) == (FAILURE, b"")
        assert (conn.ask(frame(11)) or (0,))[0] == IDENTITIES
        # one byte more: FAILURE, then the connection is closed
        assert conn.ask(struct.pack(">IB", MAX + 1, 11)) == (FAILURE, b"")
        assert _closed(conn)
        conn.close()
        conn = Conn(f"{base}/fuzz/agent.sock")
        assert conn.ask(struct.pack(">I", 0)) == (FAILURE, b"")
        assert _closed(conn)
    finally:
        conn.close()


def test_idle_and_truncated_connections_are_closed(agent_server: tuple[str, object]) -> None:
    base, _ = agent_server
    path = f"{base}/fuzz/agent.sock"
    silent, partial = Conn(path), Conn(path)
    try:
        partial.sock.sendall(struct.pack(">I", 100) + b"\x0b" + b"x" * 10)  # 89 bytes short
        start_time = time.monotonic()
        assert _closed(silent) and _closed(partial)
        assert time.monotonic() - start_time < 5  # ssh_agent_idle_seconds = 1
    finally:
        silent.close()
        partial.close()


def test_an_identitys_connections_are_capped_and_no_one_elses(
        agent_server: tuple[str, object]) -> None:
    base, _ = agent_server
    held = [Conn(f"{base}/capped/agent.sock") for _ in range(8)]
    try:
        for c in held:
            c.sock.sendall(frame(11))
            assert (c.reply() or (0,))[0] == IDENTITIES
        extra = Conn(f"{base}/capped/agent.sock")
        assert _closed(extra)  # closed as it was accepted
        extra.close()
        other = Conn(f"{base}/fuzz/agent.sock")  # another identity: unaffected
        assert (other.ask(frame(11)) or (0,))[0] == IDENTITIES
        other.close()
    finally:
        for c in held:
            c.close()
    time.sleep(0.2)
    again = Conn(f"{base}/capped/agent.sock")
    try:
        assert (again.ask(frame(11)) or (0,))[0] == IDENTITIES  # a freed place is reusable
    finally:
        again.close()


@pytest.mark.root
@pytest.mark.memfd_secret
def test_a_key_added_through_the_agent_is_in_no_readable_memory(tmp_path: Path) -> None:
    """The real command on memfd_secret: keys added over the socket (one kept
    and used thousands of times, one removed), then the whole address space
    of the server is searched for every form of both seeds."""
    base = short_dir()
    (tmp_path / "pw").write_bytes(b"agent residue passphrase\n")
    child = Child(base, ["--backend", "memfd_secret", "--ssh-agent",
                         "--passphrase-file", str(tmp_path / "pw"),
                         "--audit-log", os.path.join(base, "audit.log")])
    try:
        child.wait_ready()
        path = os.path.join(base, "run", "ssh-agent.sock")
        kept, removed = Keys(), Keys()
        conn = Conn(path)
        try:
            for k in (kept, removed):
                key = SigningKey(k.seed)
                body = add_body(key)
                assert conn.ask(frame(17, body)) == (SUCCESS, b"")
                del body, key
            assert conn.ask(frame(18, s(blob(bytes(SigningKey(removed.seed).verify_key))))) \
                == (SUCCESS, b"")
            public = bytes(SigningKey(kept.seed).verify_key)
            for i in range(3000):
                sig = sign(conn, public, b"residue %d" % i)
                assert sig is not None
            VerifyKey(public).verify(b"residue 2999", sig)
        finally:
            conn.close()
        # every form of each seed, whole and in 16-byte parts (_patterns knows
        # which forms hold the public key in a half, and searches those whole)
        patterns = {f"{who} {label}": v
                    for who, k in (("kept", kept), ("removed", removed))
                    for label, v in _patterns({f: b for f, b in k.forms().items()
                                               if f.startswith("ed25519")}).items()}
        # the positive control: the public key is in ordinary memory, and found there
        patterns["kept public key (must be found)"] = public
        scan = scan_process(child.proc.pid, patterns)
    finally:
        child.terminate()
        try:
            child.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        child.close()
        cleanup(base)
    _check_scan_was_complete(scan)
    found = dict(scan.found)
    assert found.pop("kept public key (must be found)", None), "the scan missed the public key"
    assert found == {}, f"key material found in the server's memory: {found}"
