"""The server edge's pure parts: the error table, the stats record's renderings,
audit lines, and policy decisions."""

from __future__ import annotations

import json
import logging
import os
import time

import grpc
import pytest

from secretvault.api.errors import (
    BY_NAME,
    AuditUnavailable,
    KeyNotFound,
    MemlockExceeded,
    PermissionDenied,
    StoreSealed,
)
from secretvault.backends import DirectMapStats, MemlockStats, SecretMemoryStats, SizeClassStats
from secretvault.backends._procfs import MemcgReading
from secretvault.vault import errors
from secretvault.vault.audit import AuditLog, AuditRecord
from secretvault.vault.keyring import Keyring
from secretvault.vault.metrics import families, split_host_port
from secretvault.vault.policy import OWNER, Policy
from secretvault.vault.stats import OperationCounters, VaultStats, to_proto


def test_every_error_class_has_a_status_code() -> None:
    for name, cls in BY_NAME.items():
        assert errors.STATUS[cls] == grpc.StatusCode[cls.status], name
    assert errors.STATUS[KeyNotFound] is grpc.StatusCode.NOT_FOUND
    assert errors.STATUS[MemlockExceeded] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors.STATUS[PermissionDenied] is grpc.StatusCode.PERMISSION_DENIED
    assert errors.STATUS[StoreSealed] is grpc.StatusCode.FAILED_PRECONDITION
    assert errors.STATUS[AuditUnavailable] is grpc.StatusCode.UNAVAILABLE
    assert errors.code_number(grpc.StatusCode.NOT_FOUND) == 5


def test_unexpected_exceptions_are_internal_without_detail(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "secretvault.server"):
        code, name, message = errors.describe(RuntimeError("secret detail /srv/x"), "sign")
    assert (code, name) == (grpc.StatusCode.INTERNAL, "VaultError")
    assert "secret detail" not in message and "reference #" in message
    assert "secret detail" in caplog.text  # the detail is in the server log only
    code, name, message = errors.describe(KeyNotFound("no key named 'k'"), "sign")
    assert (code, name, message) == (grpc.StatusCode.NOT_FOUND, "KeyNotFound",
                                     "no key named 'k'")


def test_internal_vault_errors_keep_their_detail_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    from secretvault.api.errors import StoreError

    with caplog.at_level(logging.ERROR, "secretvault.server"):
        code, name, message = errors.describe(
            StoreError("the key store failed: disk I/O error at /srv/db"), "create_key")
    assert (code, name) == (grpc.StatusCode.INTERNAL, "StoreError")
    assert "/srv/db" not in message and "reference #" in message
    assert "/srv/db" in caplog.text


def _stats(unlimited: bool) -> VaultStats:
    memory = SecretMemoryStats(
        backend="memfd_secret", protection="secretmem", regions=1, pages_mapped=16,
        pages_resident=3, bytes_locked=65536, key_bytes=96,
        slots=(SizeClassStats(32, 1, 1, 127), SizeClassStats(64, 1, 1, 63)),
        memlock=MemlockStats(soft=-1 if unlimited else 8 << 20, hard=-1 if unlimited else
                             8 << 20, locked=65536, cap_ipc_lock=False,
                             headroom_bytes=None if unlimited else (8 << 20) - 65536,
                             headroom_keys=(("ed25519", None if unlimited else 130000),)),
        memcg=None if unlimited else MemcgReading(1, "/x", 100, None, 10, 5, 5),
        hibernation_inhibited=True,
        direct_map=DirectMapStats("kernel", 3, 1, 4096, 2 << 20, 1 << 30, 8192, -8192, 0,
                                  None if unlimited else 2, None if unlimited else 1),
        extra=(("pool_waste_pages", 7.0),),
    )
    c = OperationCounters()
    c.record("sign", "ok", 3)
    c.record("sign", "NOT_FOUND")
    return VaultStats(memory, (("ed25519", 1), ("x25519", 0)), c.snapshot())


def test_stats_proto_leaves_unlimited_figures_absent() -> None:
    p = to_proto(_stats(unlimited=True))
    assert not p.memlock.HasField("soft") and not p.memlock.HasField("headroom_bytes")
    assert dict(p.memlock.headroom_keys) == {}
    assert not p.HasField("memcg") and not p.direct_map.HasField("distinct_2m_regions")
    q = to_proto(_stats(unlimited=False))
    assert q.memlock.soft == 8 << 20 and q.memlock.headroom_keys["ed25519"] == 130000
    assert q.memcg.usage == 100 and not q.memcg.HasField("limit")
    assert q.direct_map.distinct_2m_regions == 2 and q.direct_map.directmap_2m_delta == -8192
    assert [(o.operation, o.result, o.count) for o in q.operations] == \
        [("sign", "NOT_FOUND", 1), ("sign", "ok", 3)]
    assert q.extra["pool_waste_pages"] == 7.0 and q.keys_by_type["ed25519"] == 1


def test_metrics_and_proto_come_from_the_same_record() -> None:
    s = _stats(unlimited=False)
    p = to_proto(s)
    samples = {(m.name, tuple(sorted(x.labels.items()))): x.value
               for f in families(s) for m in [f] for x in f.samples}
    assert samples[("secretvault_secret_memory_pages_mapped", ())] == p.pages_mapped
    assert samples[("secretvault_memlock_headroom_bytes", ())] == p.memlock.headroom_bytes
    assert samples[("secretvault_direct_map_splits", (("level", "2"), ("source", "kernel")))] \
        == p.direct_map.level2_splits
    assert samples[("secretvault_operations", (("operation", "sign"), ("result", "ok")))] == 3
    assert samples[("secretvault_keys", (("type", "ed25519"),))] == 1


def test_audit_lines(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "audit.log")
    log = AuditLog(path)
    log.write([AuditRecord("ci", "unix:/s", "sign", "ci/k", 2, "ok"),
               AuditRecord("ci", "unix:/s", "sign", None, None, "INVALID_ARGUMENT")])
    log.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path) as f:
        lines = [json.loads(x) for x in f]
    assert [list(x) for x in lines] == [["time", "identity", "listener", "operation", "key",
                                         "version", "result"]] * 2
    assert lines[0]["time"].endswith("Z") and lines[0]["version"] == 2
    with pytest.raises(AuditUnavailable):  # closed: every write fails, closed
        log.write([AuditRecord("ci", "unix:/s", "sign", "k", 1, "ok")])
    full = AuditLog("/dev/full", fail_open=True)
    full.write([AuditRecord("ci", "unix:/s", "sign", "k", 1, "ok")])  # logged, not raised
    full.close()


def _reference_line(now: float, r: AuditRecord) -> str:
    """What the audit line was made with before it was built from pieces."""
    return json.dumps(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
         + f".{int(now % 1 * 1e6):06d}Z", "identity": r.identity, "listener": r.listener,
         "operation": r.operation, "key": r.key, "version": r.version, "result": r.result},
        ensure_ascii=True, separators=(",", ":")) + "\n"


def test_audit_lines_are_exactly_json(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1764111600.25  # fixed, so the reference and the log agree to the microsecond
    monkeypatch.setattr("secretvault.vault.audit.time.time", lambda: now)
    records = [
        AuditRecord("tls:spiffe://ex.org/caf\u00e9", "tcp:127.0.0.1:1", "sign",
                    'k"ey\\with\nodd\u2028chars\U0001f600\udc80', 7, "ok"),
        AuditRecord("owner", "unix:/run/s", "decrypt", "", 2**40, "PERMISSION_DENIED"),
        AuditRecord("owner", "unix:/run/s", "invalid", None, None, "INVALID_ARGUMENT"),
    ]
    path = os.path.join(str(tmp_path), "audit.log")
    log = AuditLog(path)
    log.write(records)
    log.write_one(*records[0])
    # a batch repeating its (operation, key) pairs, with other versions and results
    again = [r._replace(version=3, result="NOT_FOUND") for r in records[1:]]
    log.write_entries("owner", "unix:/run/s", [r[2:] for r in [*records[1:], *again]])
    log.close()
    with open(path, encoding="ascii") as f:
        lines = f.readlines()
    expect = [_reference_line(now, r) for r in [*records, records[0], *records[1:], *again]]
    assert lines == expect
    assert json.loads(lines[0])["key"] == records[0].key


def test_a_batch_is_audited_in_one_write(tmp_path: object,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(str(tmp_path), "audit.log")
    log = AuditLog(path)
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr("secretvault.vault.audit.os.write", counting_write)
    log.write_entries("ci", "unix:/s", [("sign", f"ci/k{i}", 1, "ok") for i in range(100)])
    log.write_entries("ci", "unix:/s", [])  # nothing: no write at all
    assert len(writes) == 1
    log.close()
    with open(path) as f:
        lines = [json.loads(x) for x in f]
    assert [x["key"] for x in lines] == [f"ci/k{i}" for i in range(100)]
    assert {x["time"] for x in lines} == {lines[0]["time"]}  # one time for the batch
    with pytest.raises(AuditUnavailable):  # closed: fail closed, like write()
        log.write_entries("ci", "unix:/s", [("sign", "k", 1, "ok")])
    with pytest.raises(AuditUnavailable):
        log.write_one("ci", "unix:/s", "sign", "k", 1, "ok")


def test_policy_fast_paths() -> None:
    p = Policy.from_dict({"identities": {
        "ci": {"allow": [{"operations": ["sign"], "keys": ["ci/*"]}]}}})
    assert p.unrestricted(OWNER)
    assert not p.unrestricted("ci") and not p.unrestricted("tls:spiffe://x")
    for _ in range(2):  # the second answer comes from the remembered decision
        assert p.allows("ci", "sign", "ci/a") and not p.allows("ci", "sign", "prod/a")
        assert not p.allows("ci", "verify", "ci/a") and not p.allows("ghost", "sign", "ci/a")
    long_name = "ci/" + "x" * 5000
    assert p.allows("ci", "sign", long_name)
    assert all(key is None or len(key) <= 128 for _, _, key in p._decisions)
    for i in range(5000):  # client-chosen names cannot grow the memory without bound
        p.allows("ci", "sign", f"ci/{i}")
    assert len(p._decisions) <= 4096


def test_policy_decisions() -> None:
    p = Policy.from_dict({"identities": {
        "ci": {"allow": [{"operations": ["sign"], "keys": ["ci/*", "shared"]}]},
        "lister": {"allow": [{"operations": ["list_keys"], "keys": ["team/*"]}]},
    }})
    assert p.allows(OWNER, "delete_key", "x")
    assert p.allows("ci", "sign", "ci/a/b") and p.allows("ci", "sign", "shared")
    assert not p.allows("ci", "sign", "CI/a") and not p.allows("ci", "sign", "shared2")
    assert not p.allows("ci", "verify", "ci/a") and not p.allows("ghost", "sign", "ci/a")
    assert p.allows("lister", "list_keys", None)
    assert p.allows("lister", "list_keys", "team/x") and not p.allows("lister", "list_keys",
                                                                      "prod/x")
    with pytest.raises(PermissionDenied, match="identity 'ci' may not verify on key 'ci/a'"):
        p.check("ci", "verify", "ci/a")
    assert p.tls_identity("spiffe://unknown") == "tls:spiffe://unknown"


def test_host_port() -> None:
    assert split_host_port("9464") == ("127.0.0.1", 9464)
    assert split_host_port("0.0.0.0:1") == ("0.0.0.0", 1)
    assert split_host_port("[::1]:80") == ("::1", 80)
    for bad in ("", "host:", "host:99999", "a:b"):
        with pytest.raises(ValueError):
            split_host_port(bad)



# --- what the edge refuses to be fooled by -----------------------------------------------


def test_reserved_identity_names_and_the_anonymous_grants() -> None:
    from secretvault.vault.policy import ANONYMOUS, RESERVED, PolicyError

    assert {"owner", "anonymous", "unknown"} <= RESERVED
    for name in sorted(RESERVED):
        with pytest.raises(PolicyError, match=r"reserved|server's own user"):
            Policy.from_dict({"identities": {name: {}}})
    # callers without a certificate get grants only through [anonymous]: nothing
    # can be bound to that name
    for body in ({"tls": ["cn"]}, {"sockets": [{"path": "/a.sock"}]}, {"allow": "x"}):
        with pytest.raises(PolicyError):
            Policy.from_dict({ANONYMOUS: body})
    p = Policy.from_dict({ANONYMOUS: {"allow": [{"operations": ["verify"], "keys": ["pub/*"]}]}})
    assert p.allows(ANONYMOUS, "verify", "pub/a") and not p.allows(ANONYMOUS, "sign", "pub/a")
    assert p.sockets == () and p.tls_identity("anonymous") == "tls:anonymous"


def test_who_may_open_a_stream_and_what_a_listing_shows() -> None:
    p = Policy.from_dict({"identities": {
        "ci": {"allow": [{"operations": ["sign"], "keys": ["ci/*"]}]},
        "lister": {"allow": [{"operations": ["list_keys"], "keys": ["team/*", "x?"]},
                             {"operations": ["get_key", "list_keys"], "keys": ["pub/*"]}]},
        "nothing": {},
    }})
    assert p.may_stream(OWNER) and p.may_stream("ci")
    assert not p.may_stream("lister") and not p.may_stream("nothing")
    assert not p.may_stream("tls:spiffe://stranger")
    assert p.lister(OWNER) is None
    see = p.lister("lister")
    assert see is not None
    names = ["team/a", "team/a/b", "TEAM/a", "xy", "xyz", "pub/k", "other", "team"]
    # exactly what allows() decides, name by name
    assert [n for n in names if see(n)] == [n for n in names
                                            if p.allows("lister", "list_keys", n)]
    assert [n for n in names if see(n)] == ["team/a", "team/a/b", "xy", "pub/k"]
    for who in ("ci", "nothing", "tls:unknown"):
        nobody = p.lister(who)
        assert nobody is not None and not any(nobody(n) for n in names)


def test_a_refused_batch_is_one_summary_line(tmp_path: object,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1764111600.5
    monkeypatch.setattr("secretvault.vault.audit.time.time", lambda: now)
    path = os.path.join(str(tmp_path), "audit.log")
    log = AuditLog(path)
    log.write_summary("ci", "unix:/s", "mac", 'k"ey', "PERMISSION_DENIED", 5,
                      {"sign": 3, "mac": 2})
    log.write_summary("ci", "unix:/s", "batch", None, "RESOURCE_EXHAUSTED", 200_000)
    log.close()
    with open(path, encoding="ascii") as f:
        lines = f.readlines()
    first = json.loads(_reference_line(now, AuditRecord("ci", "unix:/s", "mac", 'k"ey', None,
                                                        "PERMISSION_DENIED")))
    first["batch"] = {"operations": 5, "by_operation": {"mac": 2, "sign": 3}}
    second = json.loads(_reference_line(now, AuditRecord("ci", "unix:/s", "batch", None, None,
                                                         "RESOURCE_EXHAUSTED")))
    second["batch"] = {"operations": 200_000}
    assert lines == [json.dumps(x, separators=(",", ":")) + "\n" for x in (first, second)]


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.trailing: object = None

    def set_trailing_metadata(self, md: object) -> None:
        self.trailing = md

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise _Aborted(details)


def _edge() -> object:
    from secretvault.vault.edge import Authenticator, Edge, EdgeInterceptor

    edge = Edge(Policy(), AuditLog(os.devnull), OperationCounters(), None)
    return EdgeInterceptor(edge, Authenticator("unix:/s", OWNER, Policy()))


def test_a_method_the_edge_table_lacks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from secretvault.vault.edge import methods

    ran: list[object] = []

    def servicer(request: object, context: object) -> object:
        ran.append(request)
        return b"answer"

    def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(servicer)

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    edge = _edge()
    for method in ("/secretvault.v1.KeyService/NewMethod", "/some.Other/Service"):
        handler = edge.intercept_service(continuation, Details(method))  # type: ignore[attr-defined]
        ctx = _Context()
        with pytest.raises(_Aborted, match="not implemented"):
            handler.unary_unary(b"request", ctx)
        assert ctx.code is grpc.StatusCode.UNIMPLEMENTED and ran == []
    # health checking and reflection pass through untouched
    for method in ("/grpc.health.v1.Health/Check",
                   "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
        handler = edge.intercept_service(continuation, Details(method))  # type: ignore[attr-defined]
        assert handler.unary_unary(b"request", _Context()) == b"answer"
    # and the table must cover every method the descriptors list, or nothing starts
    monkeypatch.delitem(methods.METHODS, "/secretvault.v1.CryptoService/Mac")
    with pytest.raises(RuntimeError, match="CryptoService/Mac"):
        _edge()


def test_batches_take_short_turns_in_arrival_order() -> None:
    import threading

    from secretvault.vault.batch_turns import BatchTurns

    turns = BatchTurns()
    turns.POLL = 0.01
    assert turns.take(lambda: True)  # free: taken at once
    order: list[str] = []

    def batch(name: str) -> None:
        if turns.take(lambda: True):
            order.append(name)
            turns.give()

    b = threading.Thread(target=batch, args=("b",))
    b.start()
    while not turns.waiting:
        time.sleep(0.001)
    c = threading.Thread(target=batch, args=("c",))
    c.start()
    while len(turns.waiting) < 2:
        time.sleep(0.001)
    # a waiter whose call has ended leaves the queue without a turn
    alive = [True]
    gone = threading.Thread(target=lambda: order.append(
        "gone" if not turns.take(lambda: alive[0]) else "d"))
    gone.start()
    while len(turns.waiting) < 3:
        time.sleep(0.001)
    alive[0] = False
    gone.join(5)
    assert len(turns.waiting) == 2 and order == ["gone"]
    turns.give()  # the first batch ends its turn: the others follow in arrival order
    b.join(5)
    c.join(5)
    assert order == ["gone", "b", "c"]
    assert turns.take(lambda: True)  # free again
    turns.give()


def test_long_lived_calls_are_counted_and_idle_ones_cancelled() -> None:
    from secretvault.api.errors import TooManyCalls
    from secretvault.vault.edge.limits import LongCalls

    class Ctx:
        def __init__(self) -> None:
            self.cancelled = False
            self.callbacks: list[object] = []

        def add_callback(self, cb: object) -> bool:
            self.callbacks.append(cb)
            return True

        def cancel(self) -> None:
            self.cancelled = True

    calls = LongCalls(per_identity=2, idle_seconds=0.2)
    a, b, c = Ctx(), Ctx(), Ctx()
    first = calls.open("ci", "unix:/s", 10, a)
    calls.open("ci", "unix:/t", 10, b)
    with pytest.raises(TooManyCalls, match="'ci' already holds 2"):
        calls.open("ci", "unix:/s", 10, c)
    with pytest.raises(TooManyCalls, match="unix:/s already serves 1"):
        calls.open("other", "unix:/s", 1, c)
    calls.close(first)
    calls.close(first)  # idempotent: the handler and grpc's callback both close
    assert calls.held("ci") == 1
    # the one left sends nothing: cancelled after its idle limit
    deadline = time.monotonic() + 5
    while not b.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.cancelled and not a.cancelled
    b.callbacks[0]()  # type: ignore[operator]  # grpc reports the call ended
    assert calls.held("ci") == 0


# --- the one guard, around every shape of method ------------------------------------------


def test_every_shape_of_method_runs_the_same_prologue(tmp_path: object) -> None:
    """Unary, server-streaming, batch and stream calls are all refused the same
    way while draining and when the request did not parse: the servicer never
    runs, the status and the error name are the same, and each refusal is one
    audit line."""
    from secretvault.api._proto.secretvault.v1 import crypto_pb2, stats_pb2
    from secretvault.api.errors import ERROR_METADATA_KEY
    from secretvault.vault.edge import Authenticator, Edge, EdgeInterceptor
    from secretvault.vault.handlers import HANDLER_FACTORIES, Malformed

    ran: list[str] = []

    def unary(request: object, context: object) -> object:
        ran.append("unary")
        return crypto_pb2.SignResponse()

    def streaming(request: object, context: object) -> object:
        ran.append("streaming")
        yield stats_pb2.Stats()

    def stream(requests: object, context: object) -> object:
        for _ in requests:  # type: ignore[attr-defined]
            ran.append("stream")
            yield crypto_pb2.OperationResult()

    shapes = {  # method -> (request streaming, response streaming), servicer
        "/secretvault.v1.CryptoService/Sign": ((False, False), unary),
        "/secretvault.v1.StatsService/WatchStats": ((False, True), streaming),
        "/secretvault.v1.CryptoService/Batch": ((False, False), unary),
        "/secretvault.v1.CryptoService/Stream": ((True, True), stream),
    }

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    def continuation(details: Details) -> grpc.RpcMethodHandler:
        shape, behavior = shapes[details.method]
        return HANDLER_FACTORIES[shape](behavior)

    path = os.path.join(str(tmp_path), "audit.log")
    policy = Policy.from_dict({"identities": {"ci": {"allow": [
        {"operations": ["sign", "watch_stats"], "keys": ["*"]}]}}})
    edge = Edge(policy, AuditLog(path), OperationCounters(), None)
    interceptor = EdgeInterceptor(edge, Authenticator("unix:/s", "ci", policy))

    class Context(_Context):
        def is_active(self) -> bool:
            return True

        def add_callback(self, callback: object) -> bool:
            return True

    def call(method: str, request: object) -> _Context:
        handler = interceptor.intercept_service(continuation, Details(method))
        ctx = Context()
        with pytest.raises(_Aborted):
            if handler.request_streaming:
                list(handler.stream_stream(iter([request]), ctx))
            elif handler.response_streaming:
                list(handler.unary_stream(request, ctx))
            else:
                handler.unary_unary(request, ctx)
        return ctx

    requests = {
        "/secretvault.v1.CryptoService/Sign": crypto_pb2.SignRequest(key="k"),
        "/secretvault.v1.StatsService/WatchStats": stats_pb2.WatchStatsRequest(),
        "/secretvault.v1.CryptoService/Batch": crypto_pb2.BatchRequest(),
        "/secretvault.v1.CryptoService/Stream": crypto_pb2.Operation(),
    }
    # a request that did not parse (a stream's is one of its messages)
    for method, request in requests.items():
        ctx = call(method, Malformed("x.Y", "DecodeError"))
        assert (ctx.code, ctx.trailing) == (grpc.StatusCode.INVALID_ARGUMENT,
                                            ((ERROR_METADATA_KEY, "InvalidArgument"),)), method
    edge.draining.set()
    for method, request in requests.items():
        ctx = call(method, request)
        assert (ctx.code, ctx.trailing) == (grpc.StatusCode.UNAVAILABLE,
                                            ((ERROR_METADATA_KEY, "ShuttingDown"),)), method
    assert ran == []
    with open(path) as f:
        lines = [json.loads(x) for x in f]
    assert [(x["identity"], x["operation"], x["result"]) for x in lines] == [
        ("ci", "sign", "INVALID_ARGUMENT"), ("ci", "watch_stats", "INVALID_ARGUMENT"),
        ("ci", "batch", "INVALID_ARGUMENT"), ("ci", "stream", "INVALID_ARGUMENT"),
        ("unknown", "sign", "UNAVAILABLE"), ("unknown", "watch_stats", "UNAVAILABLE"),
        ("unknown", "batch", "UNAVAILABLE"), ("unknown", "stream", "UNAVAILABLE"),
    ]


def test_list_keys_shows_only_what_the_edge_hands_it(ring: Keyring) -> None:
    """The visibility travels as an argument: what the edge passes is what is listed,
    and a call that did not pass the edge lists nothing."""
    from secretvault.api._proto.secretvault.v1 import keys_pb2
    from secretvault.vault.servicers import KeyServicer

    for name in ("a", "pub/1", "pub/2", "z"):
        ring.create(name, "hmac-sha256")
    keys = KeyServicer(ring)
    request = keys_pb2.ListKeysRequest()

    def names(response: keys_pb2.ListKeysResponse) -> list[str]:
        return [k.name for k in response.keys]

    assert names(keys.ListKeys(request, None)) == []
    assert names(keys.ListKeys(request, None, None)) == ["a", "pub/1", "pub/2", "z"]
    assert names(keys.ListKeys(request, None, lambda n: n.startswith("pub/"))) == \
        ["pub/1", "pub/2"]
