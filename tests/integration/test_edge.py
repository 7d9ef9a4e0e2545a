"""The server edge under abuse, on real servers and sockets.

Each test here reproduces a way a caller could starve, flood, probe or
bypass the edge, and checks it no longer works: idle streams parking the
handler threads, a denied batch flooding the audit log, ListKeys leaking
names through its page token, changes made while the audit log is
unwritable, methods the edge has no entry for, client certificates that
name nobody, and one batch holding every other batch up.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2
from secretvault.vault.server import VaultServer
from tests.integration._support import (
    ED25519,
    Pki,
    Stubs,
    cleanup,
    code_of,
    short_dir,
    start,
    stubs,
    tls_channel,
)

C = grpc.StatusCode

POLICY = """
[identities.nobody]
[[identities.nobody.sockets]]
path = "{base}/nobody/n.sock"

[identities.streamer]
[[identities.streamer.sockets]]
path = "{base}/streamer/s.sock"
[[identities.streamer.allow]]
operations = ["sign"]
keys = ["k"]

[identities.reader]
[[identities.reader.sockets]]
path = "{base}/reader/r.sock"
[[identities.reader.allow]]
operations = ["list_keys"]
keys = ["pub/*"]
"""


def _policy(base: str, text: str = POLICY) -> str:
    path = os.path.join(base, "policy.toml")
    with open(path, "w") as f:
        f.write(text.format(base=base))
    return path


def _audit(server: VaultServer) -> list[dict[str, Any]]:
    with open(server.audit.path or "", encoding="ascii") as f:
        return [json.loads(line) for line in f]


class IdleStream:
    """A Stream whose client sends nothing until it is told to stop."""

    def __init__(self, v: Stubs, timeout: float = 30.0) -> None:
        self.q: queue.Queue[Any] = queue.Queue()
        self.call = v.crypto.Stream(iter(self.q.get, None), timeout=timeout)
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            self.outcome.extend(list(self.call))
            self.outcome.append("ended")
        except grpc.RpcError as e:
            self.outcome.append(e.code())

    def end(self) -> Any:
        self.q.put(None)
        self.call.cancel()
        self.thread.join(10)
        return self.outcome[-1] if self.outcome else None


def _wait_for(items: Any, n: int, timeout: float = 10.0) -> Any:
    """``items()`` once it has ``n`` elements (or at the timeout)."""
    deadline = time.monotonic() + timeout
    got = items()
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.02)
        got = items()
    return got


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


# --- 1. idle streams cannot starve the server ----------------------------------------------


def test_idle_streams_cannot_starve_the_owner_or_the_listener(base: str) -> None:
    # 4 handler threads per listener: before, 4 idle streams from anyone
    # parked every thread of the one shared pool and the owner's Sign timed out
    with start(base, policy_file=_policy(base), workers=4) as s:
        owner = stubs(s.config.vault.socket)
        owner.create("k")
        nobody = stubs(f"{base}/nobody/n.sock")
        streamer = stubs(f"{base}/streamer/s.sock")
        # an identity with no crypto grant is refused when the stream opens
        idle = [IdleStream(nobody) for _ in range(8)]
        for st in idle:
            st.thread.join(5)
            assert st.outcome == [C.PERMISSION_DENIED]
        # one with a crypto grant gets half its listener's threads, no more
        held = [IdleStream(streamer) for _ in range(4)]
        refused = _wait_for(lambda: [st for st in held
                                     if st.outcome == [C.RESOURCE_EXHAUSTED]], 2)
        assert len(refused) == 2 and s.edge.long_calls.held("streamer") == 2, \
            [st.outcome for st in held]
        try:
            t0 = time.monotonic()
            assert owner.crypto.Sign(crypto_pb2.SignRequest(key="k", message=b"m"),
                                     timeout=3).key_version == 1
            # and the listener the streams are on still serves unary calls
            assert streamer.crypto.Sign(crypto_pb2.SignRequest(key="k", message=b"m"),
                                        timeout=3).key_version == 1
            assert time.monotonic() - t0 < 3
        finally:
            for st in held:
                st.end()


def test_streams_per_identity_are_capped(base: str) -> None:
    with start(base, policy_file=_policy(base), max_streams_per_identity=2) as s:
        owner = stubs(s.config.vault.socket)
        owner.create("k")
        held = [IdleStream(owner) for _ in range(2)]
        _wait_for(lambda: [None] * s.edge.long_calls.held("owner"), 2)
        try:
            q: queue.Queue[Any] = queue.Queue()
            third = owner.crypto.Stream(iter(q.get, None), timeout=5)
            code, details, name = code_of(list, third)
            assert (code, name) == (C.RESOURCE_EXHAUSTED, "TooManyCalls")
            assert "'owner' already holds 2" in details
        finally:
            for st in held:
                st.end()
        # ended streams are uncounted: a new one works
        deadline = time.monotonic() + 5
        while s.edge.long_calls.held("owner") and time.monotonic() < deadline:
            time.sleep(0.05)
        ops = [crypto_pb2.Operation(id=1, sign=crypto_pb2.SignRequest(key="k"))]
        assert [r.id for r in owner.crypto.Stream(iter(ops), timeout=5)] == [1]


def test_an_idle_stream_is_cancelled_and_a_busy_one_is_not(base: str) -> None:
    with start(base, stream_idle_seconds=0.5) as s:
        owner = stubs(s.config.vault.socket)
        owner.create("k")
        idle = IdleStream(owner)
        busy_q: queue.Queue[Any] = queue.Queue()
        busy = owner.crypto.Stream(iter(busy_q.get, None), timeout=30)
        t0 = time.monotonic()
        for i in range(8):  # 1.6 s: longer than the idle limit, never idle that long
            busy_q.put(crypto_pb2.Operation(id=i, sign=crypto_pb2.SignRequest(key="k")))
            assert next(busy).id == i
            time.sleep(0.2)
        idle.thread.join(5)
        assert idle.outcome == [C.CANCELLED]
        assert time.monotonic() - t0 < 5
        busy_q.put(None)
        assert list(busy) == []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = [x for x in _audit(s) if x["operation"] == "stream"]
            if lines:
                break
            time.sleep(0.05)
        assert [(x["identity"], x["result"]) for x in lines] == [("owner", "CANCELLED")]
        assert s.edge.long_calls.held("owner") == 0


# --- 2. a denied batch is one audit line --------------------------------------------------


def test_batches_are_sized_first_and_refused_in_one_audit_line(base: str) -> None:
    with start(base, policy_file=_policy(base)) as s:
        owner = stubs(s.config.vault.socket)
        owner.create("k")
        streamer = stubs(f"{base}/streamer/s.sock")
        nobody = stubs(f"{base}/nobody/n.sock")
        before = len(_audit(s))
        # too large: refused before any operation is looked at
        big = crypto_pb2.BatchRequest(operations=[
            crypto_pb2.Operation(sign=crypto_pb2.SignRequest())] * 200_000)
        code, _, name = code_of(nobody.crypto.Batch, big, timeout=30)
        assert (code, name) == (C.RESOURCE_EXHAUSTED, "RequestTooLarge")
        # denied: one line naming the first denied operation, with the counts
        ops = [crypto_pb2.Operation(sign=crypto_pb2.SignRequest(key="k"))] * 3000
        ops += [crypto_pb2.Operation(mac=crypto_pb2.MacRequest(key="k"))] * 2000
        ops += [crypto_pb2.Operation(sign=crypto_pb2.SignRequest(key="other"))] * 5
        code, details, _ = code_of(streamer.crypto.Batch,
                                   crypto_pb2.BatchRequest(operations=ops), timeout=30)
        assert code == C.PERMISSION_DENIED and "may not mac on key 'k'" in details
        new = _audit(s)[before:]
        assert len(new) == 2, len(new)
        assert (new[0]["identity"], new[0]["operation"], new[0]["key"], new[0]["result"],
                new[0]["batch"]) == ("nobody", "batch", None, "RESOURCE_EXHAUSTED",
                                     {"operations": 200_000})
        assert (new[1]["identity"], new[1]["operation"], new[1]["key"], new[1]["result"],
                new[1]["batch"]) == ("streamer", "mac", "k", "PERMISSION_DENIED",
                                     {"operations": 5005,
                                      "by_operation": {"sign": 3005, "mac": 2000}})
        ops_counted = {(o.operation, o.result): o.count for o in owner.get_stats().operations}
        assert ops_counted[("mac", "PERMISSION_DENIED")] == 2000


# --- 3. ListKeys shows, pages and hands out only visible names ------------------------------


def test_list_keys_filters_before_paging_and_the_token_leaks_nothing(base: str) -> None:
    with start(base, policy_file=_policy(base)) as s:
        owner = stubs(s.config.vault.socket)
        visible = [f"pub/{i}" for i in range(5)]
        hidden = ["a-secret", "b/secret", "p", "pub", "pua/x", "zzz"]
        for i, name in enumerate(sorted(visible + hidden)):
            owner.create(name)
        reader = stubs(f"{base}/reader/r.sock")
        for size in (1, 2, 3, 5, 1000):
            seen: list[str] = []
            token = ""
            pages = []
            while True:
                r = reader.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=size,
                                                                  page_token=token))
                names = [k.name for k in r.keys]
                pages.append(len(names))
                seen += names
                token = r.next_page_token
                if token:
                    # the token is the last name of this page: one it may see
                    assert base64.urlsafe_b64decode(token).decode() == names[-1]
                if not token:
                    break
            assert seen == visible, size
            # every page but the last is full, and no page is empty
            assert all(n == size for n in pages[:-1]) and 0 < pages[-1] <= size, pages
        # a prefix narrows within what is visible
        r = reader.keys.ListKeys(keys_pb2.ListKeysRequest(prefix="pu"))
        assert [k.name for k in r.keys] == visible and not r.next_page_token
        # the owner sees everything, in pages
        r = owner.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=4))
        assert [k.name for k in r.keys] == sorted(visible + hidden)[:4]


# --- 4. no change happens unaudited ---------------------------------------------------------


def test_changes_are_refused_when_their_attempt_cannot_be_audited(base: str) -> None:
    # /dev/full: every write(2) is ENOSPC, like a full disk
    with start(base, audit_log="/dev/full") as s:
        ring = s.vault.keyring
        v = stubs(s.config.vault.socket)
        for call, request in (
            (v.keys.CreateKey, keys_pb2.CreateKeyRequest(name="new", type=ED25519)),
        ):
            assert code_of(call, request)[:3:2] == (C.UNAVAILABLE, "AuditUnavailable")
        assert [k.name for k in ring.list()] == []
        ring.create("kept", "ed25519")
        ring.rotate("kept")
        for call, request in (
            (v.keys.DeleteKey, keys_pb2.DeleteKeyRequest(name="kept")),
            (v.keys.RotateKey, keys_pb2.RotateKeyRequest(name="kept")),
            (v.keys.DeleteKeyVersion, keys_pb2.DeleteKeyVersionRequest(name="kept", version=1)),
            (v.keys.SetMinDecryptionVersion,
             keys_pb2.SetMinDecryptionVersionRequest(name="kept", version=2)),
        ):
            assert code_of(call, request)[:3:2] == (C.UNAVAILABLE, "AuditUnavailable"), call
        info = ring.get("kept")
        assert (info.primary_version, [x.version for x in info.versions],
                info.min_decryption_version) == (2, [1, 2], 1)


# --- 5. nothing runs without an entry in the edge's table ------------------------------------


def test_a_method_missing_from_the_edge_table_stops_the_server_from_starting(
        base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from secretvault.vault.edge import methods

    monkeypatch.delitem(methods.METHODS, "/secretvault.v1.KeyService/GetKey")
    with pytest.raises(RuntimeError, match="KeyService/GetKey"):
        start(base)


def test_a_method_missing_from_the_edge_table_is_unimplemented(
        base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from secretvault.vault.edge import interceptor, methods

    # as if the start-up check had not been there: the call must still not run
    monkeypatch.delitem(methods.METHODS, "/secretvault.v1.KeyService/GetKey")
    monkeypatch.setattr(interceptor, "check_methods", lambda: None)
    with start(base, policy_file=_policy(base)) as s:
        owner = stubs(s.config.vault.socket)
        owner.create("k")
        for who in (owner, stubs(f"{base}/nobody/n.sock")):
            code, details, _ = code_of(who.keys.GetKey, keys_pb2.GetKeyRequest(name="k"))
            assert code == C.UNIMPLEMENTED and "GetKey" in details
        # health and reflection still pass through; the rest still works
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        assert health_pb2_grpc.HealthStub(owner.channel).Check(
            health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert owner.sign("k").key_version == 1


# --- 6. a certificate that names nobody is not "anonymous" -----------------------------------


def test_a_client_certificate_without_subject_is_unauthenticated(base: str) -> None:
    pki = Pki(base)
    cert, key = pki.issue("server", cn="localhost", server=True)
    policy = _policy(base, '[[anonymous.allow]]\noperations = ["verify", "sign"]\n'
                     'keys = ["*"]\n')
    with start(base, policy_file=policy, tcp="127.0.0.1:0", tls_cert=cert, tls_key=key,
               client_ca=pki.ca_path) as s:
        stubs(s.config.vault.socket).create("k")
        assert s.tcp_port
        nameless = pki.issue("nameless", cn=None)  # no CN, no SAN URI
        v = Stubs(tls_channel(s.tcp_port, pki, nameless))
        code, details, name = code_of(v.sign, "k")
        assert (code, name) == (C.UNAUTHENTICATED, "Unauthenticated")
        assert "neither a SAN URI nor a subject CN" in details
        line = _audit(s)[-1]
        assert (line["identity"], line["result"]) == ("unknown", "UNAUTHENTICATED")


# --- 7. one batch does not hold the others up ------------------------------------------------


def test_a_small_batch_is_not_held_up_by_a_large_one(base: str) -> None:
    with start(base, max_batch_operations=40_000) as s:
        owner = stubs(s.config.vault.socket)
        owner.create("k")
        big = crypto_pb2.BatchRequest(operations=[
            crypto_pb2.Operation(sign=crypto_pb2.SignRequest(key="k"))] * 40_000)
        small = crypto_pb2.BatchRequest(operations=[
            crypto_pb2.Operation(sign=crypto_pb2.SignRequest(key="k"))])
        done: dict[str, float] = {}

        def run_big() -> None:
            owner.crypto.Batch(big, timeout=60)
            done["big"] = time.monotonic()

        t0 = time.monotonic()
        t = threading.Thread(target=run_big)
        t.start()
        time.sleep(0.1)  # the big batch is running by now
        sent = time.monotonic()
        owner.crypto.Batch(small, timeout=60)
        waited = time.monotonic() - sent
        t.join(60)
        took = done["big"] - t0
        if took < 0.4:
            pytest.fail(f"the large batch took only {took:.2f} s: too fast to show "
                        "anything; make it larger")
        # it waited about one turn of the big batch, not for the rest of it
        assert waited < took / 4, (waited, took)


# --- undecodable requests: every service blames the client -------------------------------

#: bytes no request message parses (unknown fields are skipped, so these are
#: broken for every message): a truncated length, a truncated varint, a group
#: end with no start, a truncated tag
UNDECODABLE = (b"\x0a\x05ab", b"\x08", b"\x0c", b"\xff")


def _every_method() -> list[tuple[str, bool, bool]]:
    """(path, request streaming, response streaming) of every method the server hosts."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    from secretvault.api._proto.secretvault.v1 import stats_pb2

    services = [*(m.DESCRIPTOR.services_by_name[n] for m, n in (
        (keys_pb2, "KeyService"), (crypto_pb2, "CryptoService"), (stats_pb2, "StatsService"),
        (health_pb2, "Health"), (reflection_pb2, "ServerReflection")))]
    return [(f"/{s.full_name}/{m.name}", m.client_streaming, m.server_streaming)
            for s in services for m in s.methods]


def _raw_call(channel: grpc.Channel, path: str, shape: tuple[bool, bool],
              data: bytes) -> tuple[grpc.StatusCode, str, str | None]:
    ident: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    try:
        if shape == (False, False):
            channel.unary_unary(path, **ident)(data, timeout=10)
        elif shape == (False, True):
            list(channel.unary_stream(path, **ident)(data, timeout=10))
        else:
            list(channel.stream_stream(path, **ident)(iter([data]), timeout=10))
    except grpc.RpcError as e:
        meta = dict(e.trailing_metadata() or ())
        return e.code(), e.details() or "", meta.get("secretvault-error")
    raise AssertionError(f"{path} accepted {data!r}")


def test_undecodable_bytes_are_invalid_argument_on_every_service(base: str) -> None:
    """Health, reflection and every vault method: INVALID_ARGUMENT, never
    INTERNAL ("Exception deserializing request!"); the server stays up."""
    methods = _every_method()
    assert {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"} <= {
                p for p, _, _ in methods}
    with start(base) as s:
        v = stubs(s.config.vault.socket)
        v.create("k")
        wrong = []
        for path, *shape in methods:
            for data in UNDECODABLE:
                code, details, name = _raw_call(v.channel, path, (shape[0], shape[1]), data)
                if (code, name) != (C.INVALID_ARGUMENT, "InvalidArgument") \
                        or "is not a valid" not in details:
                    wrong.append((path, data, code, details, name))
        assert wrong == []
        assert v.sign("k").key_version == 1  # still serving
        # every operation name the counters recorded (a Batch and a Stream
        # refused whole among them, and an Operation with nothing set) is one
        # the stats contract names (proto/secretvault/v1/stats.proto)
        v.crypto.Batch(crypto_pb2.BatchRequest(operations=[crypto_pb2.Operation(id=1)]))
        recorded = {o.operation for o in v.get_stats().operations}
        assert {"batch", "stream", "invalid", "sign", "create_key"} <= recorded
        from tests.unit.api.test_proto_docs import comment_above

        listed = comment_above("stats", "string operation = 1;")
        assert sorted(n for n in recorded if f'"{n}"' not in listed) == []
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(v.channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
