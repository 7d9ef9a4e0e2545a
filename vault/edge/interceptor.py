"""The server edge: identity, policy, errors, audit and metrics, for every call.

One :class:`EdgeInterceptor` per listener wraps every method of the vault's
three services.  Health checking and reflection pass through untouched;
any other method the :data:`METHODS` table does not describe is refused
with UNIMPLEMENTED (and the server refuses to start when the service
descriptors list a method the table lacks), so nothing runs unchecked.
For each call it:

1. refuses new calls with UNAVAILABLE (``ShuttingDown``) once draining began;
2. establishes the identity: the listener's own (a Unix socket file only
   that identity can open), or the verified client certificate on mutual
   TLS (its SAN URI, else its CN, mapped through the policy; a certificate
   with neither is UNAUTHENTICATED).  Nothing the client sends can change it;
3. decodes (a request that did not parse is INVALID_ARGUMENT) and checks
   the policy — the one place it is checked: every unary call, every
   operation of a batch (after its size: all or nothing, one denied
   operation denies the batch and nothing runs) and every operation of a
   stream (a denied one ends the stream with PERMISSION_DENIED; the ones
   before it were served).  A Stream is refused when it opens unless the
   identity holds some crypto grant;
4. bounds the long-lived calls (Stream, WatchStats): so many per identity
   and per listener (RESOURCE_EXHAUSTED, ``TooManyCalls``, beyond), and a
   stream that receives nothing for ``stream_idle_seconds`` is cancelled,
   so no caller can park the handler threads;
5. maps any error to its status through ``secretvault.vault.errors`` (the one table);
6. writes the audit lines and counts the operations.  An operation that
   changes keys is audited as an ``attempt`` before it runs and refused
   when that line cannot be written; for any other, the result is withheld
   when its line cannot be written (fail closed, UNAVAILABLE).  A batch
   that does not run is one summary line, not a line per operation.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from secretvault.api.errors import (
    PermissionDenied,
    RequestTooLarge,
    ShuttingDown,
    TooManyCalls,
    Unauthenticated,
    VaultError,
)
from secretvault.vault import errors
from secretvault.vault.audit import AuditLog, Entry
from secretvault.vault.metrics import Metrics
from secretvault.vault.policy import ANONYMOUS, UNKNOWN, Policy
from secretvault.vault.servicers import (
    LIST_VISIBLE,
    MAX_BATCH_OPERATIONS,
    Malformed,
    method_paths,
    watch_interval,
)
from secretvault.vault.stats import OperationCounters

log = logging.getLogger("secretvault.server")

Request = Any
Response = Any


@dataclass(frozen=True, slots=True)
class MethodSpec:
    operation: str
    key: Callable[[Request], str | None]
    version: Callable[[Request, Response | None], int | None]
    #: changes keys: audited as an attempt before it runs (refused if it cannot be)
    mutating: bool = False


def _name(r: Request) -> str:
    return str(r.name)


def _key(r: Request) -> str:
    return str(r.key)


def _none(r: Request) -> None:
    return None


def _no_version(r: Request, resp: Response | None) -> None:
    return None


def _primary(r: Request, resp: Response | None) -> int | None:
    return int(resp.primary_version) if resp is not None else None


def _requested(r: Request, resp: Response | None) -> int | None:
    return int(r.version) or None


def _response_version(r: Request, resp: Response | None) -> int | None:
    return int(resp.version) if resp is not None else (int(r.version) or None)


def _key_version(r: Request, resp: Response | None) -> int | None:
    return int(resp.key_version) if resp is not None else None


_KS = "/secretvault.v1.KeyService/"
_CS = "/secretvault.v1.CryptoService/"
_SS = "/secretvault.v1.StatsService/"

#: every method of the vault's services: what it is called in the policy,
#: which key it touches and which version to audit
METHODS: dict[str, MethodSpec] = {
    _KS + "CreateKey": MethodSpec("create_key", _name, _primary, mutating=True),
    _KS + "GetImportKey": MethodSpec("get_import_key", _none, _no_version),
    _KS + "ImportKey": MethodSpec("import_key", _name, _primary, mutating=True),
    _KS + "GetKey": MethodSpec("get_key", _name, _primary),
    _KS + "GetPublicKey": MethodSpec("get_public_key", _name, _response_version),
    _KS + "ListKeys": MethodSpec("list_keys", _none, _no_version),
    _KS + "RotateKey": MethodSpec("rotate_key", _name, _primary, mutating=True),
    _KS + "SetMinDecryptionVersion": MethodSpec("set_min_decryption_version", _name,
                                                _requested, mutating=True),
    _KS + "DeleteKeyVersion": MethodSpec("delete_key_version", _name, _requested,
                                         mutating=True),
    _KS + "DeleteKey": MethodSpec("delete_key", _name, _no_version, mutating=True),
    _CS + "Sign": MethodSpec("sign", _key, _key_version),
    _CS + "Verify": MethodSpec("verify", _key, _key_version),
    _CS + "Encrypt": MethodSpec("encrypt", _key, _key_version),
    _CS + "Decrypt": MethodSpec("decrypt", _key, _key_version),
    _CS + "Mac": MethodSpec("mac", _key, _key_version),
    _CS + "VerifyMac": MethodSpec("verify_mac", _key, _key_version),
    _SS + "GetStats": MethodSpec("get_stats", _none, _no_version),
    _SS + "WatchStats": MethodSpec("watch_stats", _none, _no_version),
}
BATCH = _CS + "Batch"
STREAM = _CS + "Stream"
LIST_KEYS = _KS + "ListKeys"
WATCH_STATS = _SS + "WatchStats"

#: the services that pass through unchecked: they reveal the API, not keys
PASS_THROUGH: tuple[str, ...] = (
    f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/",
    f"/{reflection.SERVICE_NAME}/",
)


def check_methods() -> None:
    """Refuse to serve when a vault method has no entry in the edge's table.

    A method added to the .proto is served from the descriptors; without an
    entry here, it would have no policy check, no audit line and no error
    mapping.  Called when a listener's edge is built, so the server does not
    start.
    """
    missing = [m for m in method_paths() if m not in METHODS and m not in (BATCH, STREAM)]
    if missing:
        raise RuntimeError(
            f"the server edge has no policy entry for {', '.join(missing)}: add it to "
            "secretvault.vault.edge.interceptor.METHODS (operation name, key, audited version)")


def _op_target(op: Request) -> tuple[str, str | None]:
    """(operation name, key) of one batch/stream Operation."""
    kind = op.WhichOneof("op")
    if kind is None:
        return "invalid", None
    return str(kind), str(getattr(op, kind).key)


def _op_record(result: Response) -> tuple[str, int | None]:
    """(result, version) of one OperationResult."""
    which = result.WhichOneof("result")
    if which == "error" or which is None:
        code = result.error.code
        return _CODE_NAMES.get(code, str(code)), None
    return "ok", int(getattr(result, which).key_version) or None


_CODE_NAMES = {errors.code_number(c): c.name for c in grpc.StatusCode}


# --- identity -----------------------------------------------------------------------


class Authenticator:
    """Says who is calling, from what the kernel or TLS established."""

    def __init__(self, listener: str, identity: str | None, policy: Policy) -> None:
        self.listener = listener
        self._identity = identity  # fixed for a Unix listener; None: from the certificate
        self._policy = policy
        self._cache: dict[bytes, str] = {}
        self._lock = threading.Lock()

    @property
    def fixed_identity(self) -> str | None:
        """The identity of every call on this listener, or None when each call's
        certificate says (TLS)."""
        return self._identity

    def identity(self, context: grpc.ServicerContext) -> str:
        if self._identity is not None:
            return self._identity
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            # server-only TLS: the client proved nothing
            return ANONYMOUS
        pem = pems[0]
        with self._lock:
            name = self._cache.get(pem)
        if name is None:
            subject = certificate_subject(pem)
            # "" stands for a certificate that names nobody (remembered too)
            name = self._policy.tls_identity(subject) if subject else ""
            with self._lock:
                if len(self._cache) > 1024:
                    self._cache.clear()
                self._cache[pem] = name
        if not name:
            # a verified certificate that names nobody: it must not become
            # "anonymous" (whose grants are for callers without a certificate)
            raise Unauthenticated(
                "the client certificate has neither a SAN URI nor a subject CN: it names no "
                "identity the policy could map")
        return name


def certificate_subject(pem: bytes) -> str | None:
    """The first SAN URI of a (verified) client certificate, else its CN."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return str(uris[0])
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


# --- long-lived calls -----------------------------------------------------------------


class LongCall:
    """A Stream or WatchStats call in progress (see :class:`LongCalls`)."""

    __slots__ = ("context", "identity", "idle", "last", "listener", "timed_out")

    def __init__(self, identity: str, listener: str, context: grpc.ServicerContext,
                 idle: float) -> None:
        self.identity = identity
        self.listener = listener
        self.context = context
        self.idle = idle
        #: perf_counter() of its last sign of life: set by the edge on every
        #: request a stream receives and every update a watch sends
        self.last = time.perf_counter()
        self.timed_out = False


class LongCalls:
    """The streams and watches in progress: bounded, and cancelled when idle.

    grpcio's synchronous server runs each call on a handler thread until it
    ends, and a Stream's handler spends its idle time blocked in the request
    iterator, so each open Stream or WatchStats holds a thread.  Hence:

    * an identity holds at most ``per_identity`` of them, over all listeners;
    * a listener serves at most its ``per_listener`` share (half its threads,
      so its unary calls always find a thread);
    * a call with no sign of life for its idle limit is cancelled.  A
      watchdog thread (running only while such calls are open) calls
      ``context.cancel()``: grpc core cancels the call, the blocked request
      iterator raises in the handler's thread, which unwinds and frees the
      thread; the client sees CANCELLED.
    """

    def __init__(self, per_identity: int, idle_seconds: float) -> None:
        self.per_identity = per_identity
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._calls: set[LongCall] = set()
        self._by_identity: dict[str, int] = {}
        self._by_listener: dict[str, int] = {}
        self._watchdog: threading.Thread | None = None

    def open(self, identity: str, listener: str, per_listener: int,
             context: grpc.ServicerContext, extra_idle: float = 0.0) -> LongCall:
        """Count a new long-lived call, or raise :class:`TooManyCalls`."""
        with self._lock:
            held = self._by_identity.get(identity, 0)
            if held >= self.per_identity:
                raise TooManyCalls(
                    f"identity {identity!r} already holds {held} streams or watches, the most "
                    "the server allows one identity (max_streams_per_identity): end one, or "
                    "send more operations down the streams it has")
            busy = self._by_listener.get(listener, 0)
            if busy >= per_listener:
                raise TooManyCalls(
                    f"{listener} already serves {busy} streams or watches, the most it "
                    "allows (half its handler threads): retry later")
            self._by_identity[identity] = held + 1
            self._by_listener[listener] = busy + 1
            call = LongCall(identity, listener, context, self.idle_seconds + extra_idle)
            self._calls.add(call)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                                  name="secretvault-idle-calls")
                self._watchdog.start()
        # however the call ends (even if its handler never resumes), it is uncounted
        if not context.add_callback(lambda: self.close(call)):
            self.close(call)
        return call

    def close(self, call: LongCall) -> None:
        """Uncount a call (idempotent: the handler and grpc's callback both do)."""
        with self._lock:
            if call not in self._calls:
                return
            self._calls.discard(call)
            for counts, name in ((self._by_identity, call.identity),
                                 (self._by_listener, call.listener)):
                n = counts[name] - 1
                if n:
                    counts[name] = n
                else:
                    del counts[name]

    def held(self, identity: str) -> int:
        with self._lock:
            return self._by_identity.get(identity, 0)

    def _watch(self) -> None:
        tick = min(max(self.idle_seconds / 4, 0.05), 1.0)
        while True:
            time.sleep(tick)
            with self._lock:
                if not self._calls:
                    self._watchdog = None
                    return
                now = time.perf_counter()
                stale = [c for c in self._calls if not c.timed_out and now - c.last > c.idle]
                for c in stale:
                    c.timed_out = True
            for c in stale:
                log.info("cancelling an idle stream of identity %r on %s: nothing for %.0f s",
                         c.identity, c.listener, c.idle)
                c.context.cancel()


# --- the interceptor ------------------------------------------------------------------


class Edge:
    """State the listeners share: policy, audit, counters, metrics, limits, draining."""

    def __init__(
        self,
        policy: Policy,
        audit: AuditLog,
        counters: OperationCounters,
        metrics: Metrics | None,
        *,
        max_batch: int = MAX_BATCH_OPERATIONS,
        workers: int = 64,
        max_streams_per_identity: int = 8,
        stream_idle_seconds: float = 60.0,
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.counters = counters
        self.metrics = metrics
        self.max_batch = max_batch
        self.long_calls = LongCalls(max_streams_per_identity, stream_idle_seconds)
        #: long-lived calls one listener serves at once: half its handler threads
        self.long_calls_per_listener = max(1, workers // 2)
        self.draining = threading.Event()


class EdgeInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """The edge of one listener.

    Everything that does not change from call to call -- the method's
    policy name and audit accessors, the listener's fixed identity and
    whether the policy restricts it, the metrics child -- is looked up once,
    when a method's handler is wrapped; a call only does the per-call part.
    """

    def __init__(self, edge: Edge, authenticator: Authenticator) -> None:
        check_methods()
        self._edge = edge
        self._auth = authenticator
        # the wrapped handler of each method, built on its first call
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        # a Unix listener's identity is fixed; when the policy lets it do
        # everything (the owner), no operation of this listener needs a check
        fixed = authenticator.fixed_identity
        self._check: Callable[[str, str, str | None], None] | None = (
            None if fixed is not None and edge.policy.unrestricted(fixed) else edge.policy.check)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = continuation(details)
        if handler is None:
            return None
        if method in METHODS or method in (BATCH, STREAM):
            wrapped = self._wrapped[method] = self._wrap(method, handler)
            return wrapped
        if method.startswith(PASS_THROUGH):
            return handler  # health checking, reflection
        # served, yet unknown to the edge: it would run with no policy check
        return _unlisted(method, handler)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method == BATCH:
            return grpc.unary_unary_rpc_method_handler(
                self._batch(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if method == STREAM:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        spec = METHODS[method]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(spec, handler.unary_unary, filter_list=method == LIST_KEYS),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(spec, handler.unary_stream,
                                   watch=method == WATCH_STATS),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return _unlisted(method, handler)  # a client-streaming form the edge has no code for

    # --- pieces ---------------------------------------------------------------------

    def _begin(self, context: grpc.ServicerContext) -> str:
        if self._edge.draining.is_set():
            raise _shutting_down()
        return self._auth.identity(context)

    def _note(self, identity: str, operation: str, key: str | None, version: int | None,
              result: str) -> None:
        """Count, then audit one line (raises AuditUnavailable when failing closed)."""
        self._edge.counters.record(operation, result)
        self._edge.audit.write_one(identity, self._auth.listener, operation, key, version,
                                   result)

    def _fail(self, context: grpc.ServicerContext, exc: BaseException, where: str,
              audit: Callable[[str], None]) -> NoReturn:
        if not isinstance(exc, VaultError) and (isinstance(exc, grpc.RpcError)
                                                or not context.is_active()):
            # the client went away (cancelled, or past its deadline) or the
            # call was cancelled idle, and grpc raised out of the request
            # iterator: nobody to answer, and no bug
            code, name, message = (grpc.StatusCode.CANCELLED, "VaultError",
                                   "the call was cancelled or its deadline passed")
        else:
            code, name, message = errors.describe(exc, where)
        try:
            audit(code.name)
        except VaultError as e:
            # fail closed: not even an error is answered unaudited
            code, name, message = errors.describe(e, where)
        errors.abort(context, code, name, message)

    def _observer(self, operation: str) -> Callable[[float], None] | None:
        metrics = self._edge.metrics
        return metrics.observer(operation) if metrics is not None else None

    # --- unary ------------------------------------------------------------------------

    def _unary(self, spec: MethodSpec, inner: Callable[[Request, grpc.ServicerContext],
                                                        Response],
               *, filter_list: bool = False) -> Callable[[Request, grpc.ServicerContext],
                                                         Response]:
        listener = self._auth.listener
        fixed = self._auth.fixed_identity
        identify = self._auth.identity
        lister = self._edge.policy.lister
        check = self._check
        draining = self._edge.draining
        count = self._edge.counters.record
        write_one = self._edge.audit.write_one
        operation = spec.operation
        key_of = spec.key
        version_of = spec.version
        mutating = spec.mutating
        observe = self._observer(operation)
        clock = time.perf_counter
        fail = self._fail
        note = self._note

        def behavior(request: Request, context: grpc.ServicerContext) -> Response:
            start = clock() if observe is not None else 0.0
            identity = UNKNOWN
            key: str | None = None
            try:
                if draining.is_set():
                    raise _shutting_down()
                identity = fixed if fixed is not None else identify(context)
                if isinstance(request, Malformed):
                    raise request.error()
                key = key_of(request)
                if check is not None:
                    check(identity, operation, key)
                if mutating:
                    # a change is audited before it is made: if this line
                    # cannot be written (failing closed), nothing changes
                    write_one(identity, listener, operation, key,
                              _audit_version(version_of, request, None), "attempt")
                if filter_list:
                    # the names this identity may list, applied before paging
                    visible = LIST_VISIBLE.set(lister(identity))
                    try:
                        response = inner(request, context)
                    finally:
                        LIST_VISIBLE.reset(visible)
                else:
                    response = inner(request, context)
                try:
                    version = version_of(request, response)
                except (AttributeError, TypeError, ValueError):
                    version = None
                count(operation, "ok")
                write_one(identity, listener, operation, key, version, "ok")
            except Exception as e:
                fail(context, e, operation, lambda result: note(
                    identity, operation, key, _audit_version(version_of, request, None),
                    result))
            finally:
                if observe is not None:
                    observe(clock() - start)
            return response

        return behavior

    def _unary_stream(self, spec: MethodSpec,
                      inner: Callable[[Request, grpc.ServicerContext], Iterator[Response]],
                      *, watch: bool = False
                      ) -> Callable[[Request, grpc.ServicerContext], Iterator[Response]]:
        listener = self._auth.listener
        check = self._check
        long_calls = self._edge.long_calls
        per_listener = self._edge.long_calls_per_listener
        operation = spec.operation
        clock = time.perf_counter

        def behavior(request: Request, context: grpc.ServicerContext) -> Iterator[Response]:
            identity = UNKNOWN
            call: LongCall | None = None
            try:
                identity = self._begin(context)
                if isinstance(request, Malformed):
                    raise request.error()
                if check is not None:
                    check(identity, operation, None)
                if watch:
                    # a watch sends an update every interval: it is idle when
                    # one has not gone out for an interval past the idle limit
                    call = long_calls.open(identity, listener, per_listener, context,
                                           watch_interval(request.interval_seconds))
                # one line when the watch begins: a watch may outlive the log's rotation
                self._note(identity, operation, None, None, "ok")
                for item in inner(request, context):
                    if call is not None:
                        call.last = clock()
                    yield item
            except Exception as e:
                self._fail(context, e, operation,
                           lambda result: self._note(identity, operation, None, None, result))
            finally:
                if call is not None:
                    long_calls.close(call)

        return behavior

    # --- batch and stream -------------------------------------------------------------

    def _batch(self, inner: Callable[[Request, grpc.ServicerContext], Response]
               ) -> Callable[[Request, grpc.ServicerContext], Response]:
        listener = self._auth.listener
        fixed = self._auth.fixed_identity
        identify = self._auth.identity
        check = self._check
        draining = self._edge.draining
        count = self._edge.counters.record
        write_entries = self._edge.audit.write_entries
        write_summary = self._edge.audit.write_summary
        policy = self._edge.policy
        max_batch = self._edge.max_batch
        observe = self._observer("batch")
        clock = time.perf_counter
        fail = self._fail

        def behavior(request: Request, context: grpc.ServicerContext) -> Response:
            start = clock()
            identity = UNKNOWN
            size = 0
            targets: list[tuple[str, str | None]] = []
            denied: list[tuple[str, str | None]] = []

            def summary(result: str) -> None:
                # the batch did not run (or its answer is lost): one line for
                # all of it, however many operations it carried
                op, key = denied[0] if denied else ("batch", None)
                by_op: dict[str, int] | None = None
                if targets:
                    by_op = collections.Counter(o for o, _ in targets)
                    for o, n in by_op.items():
                        count(o, result, n)
                else:
                    count("batch", result)
                write_summary(identity, listener, op, key, result, size, by_op)

            try:
                if draining.is_set():
                    raise _shutting_down()
                identity = fixed if fixed is not None else identify(context)
                if isinstance(request, Malformed):
                    raise request.error()
                operations = request.operations
                size = len(operations)
                # the size first: nothing is looked at (or audited) one
                # operation at a time in a batch that will not run
                if size > max_batch:
                    raise RequestTooLarge(f"a batch carries at most {max_batch} operations; "
                                          f"got {size}: split it")
                targets = [_op_target(op) for op in operations]
                # all or nothing: a batch with one denied operation runs none
                if check is not None:
                    for op, key in targets:
                        if op != "invalid":
                            try:
                                check(identity, op, key)
                            except PermissionDenied:
                                denied.append((op, key))
                                raise
                    # nothing denied, because nothing checkable was asked (an
                    # empty batch, or operations with none set): still nothing
                    # for an identity without a crypto grant
                    if not policy.may_stream(identity):
                        raise PermissionDenied(
                            f"identity {identity!r} may not call Batch: it holds no sign, "
                            f"verify, encrypt, decrypt, mac or verify_mac grant "
                            f"({policy.source})")
                response = inner(request, context)
                # one line per operation, all written at once; the results go
                # back only once that write succeeded (fail closed)
                entries = [(op, key, version, outcome) for (op, key), (outcome, version)
                           in zip(targets, map(_op_record, response.results), strict=False)]
                _count(count, entries)
                write_entries(identity, listener, entries)
            except Exception as e:
                fail(context, e, "batch", summary)
            finally:
                if observe is not None:
                    observe(clock() - start)
            return response

        return behavior

    def _stream(self, inner: Callable[[Iterable[Request], grpc.ServicerContext],
                                      Iterator[Response]]
                ) -> Callable[[Iterator[Request], grpc.ServicerContext], Iterator[Response]]:
        listener = self._auth.listener
        check = self._check
        policy = self._edge.policy
        long_calls = self._edge.long_calls
        per_listener = self._edge.long_calls_per_listener
        count = self._edge.counters.record
        write_one = self._edge.audit.write_one
        metrics = self._edge.metrics
        clock = time.perf_counter

        def behavior(requests: Iterator[Request], context: grpc.ServicerContext
                     ) -> Iterator[Response]:
            identity = UNKNOWN
            call: LongCall | None = None
            pending: collections.deque[tuple[str, str | None, float]] = collections.deque()
            current: list[tuple[str, str | None]] = []

            def checked(call: LongCall) -> Iterator[Request]:
                for op in requests:
                    now = call.last = clock()
                    if isinstance(op, Malformed):
                        current[:] = [("stream", None)]
                        raise op.error()
                    target = _op_target(op)
                    if target[0] != "invalid":
                        current[:] = [target]
                        if check is not None:
                            check(identity, *target)
                    pending.append((target[0], target[1], now))
                    yield op

            def audit(result: str) -> None:
                op, key = current[0] if current else ("stream", None)
                self._note(identity, op, key, None, result)

            try:
                identity = self._begin(context)
                # an identity that may do nothing a stream carries could only
                # hold a thread with it: refused before it waits for anything
                if check is not None and not policy.may_stream(identity):
                    raise PermissionDenied(
                        f"identity {identity!r} may not open a Stream: it holds no sign, "
                        f"verify, encrypt, decrypt, mac or verify_mac grant ({policy.source})")
                call = long_calls.open(identity, listener, per_listener, context)
                for result in inner(checked(call), context):
                    op, key, start = pending.popleft()
                    outcome, version = _op_record(result)
                    count(op, outcome)
                    write_one(identity, listener, op, key, version, outcome)
                    if metrics is not None:
                        metrics.observe(op, clock() - start)
                    yield result
                if call.timed_out or not context.is_active():
                    # cancelled (for idling, or by the client) while waiting for
                    # a request: grpc may end the request iterator quietly
                    # instead of raising, as if the client had finished
                    audit(grpc.StatusCode.CANCELLED.name)
            except Exception as e:
                self._fail(context, e, "stream", audit)
            finally:
                if call is not None:
                    long_calls.close(call)

        return behavior


def _unlisted(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler that refuses ``method``: served, but not in the edge's table."""
    log.error("refusing %s: the server edge has no policy entry for it", method)
    message = f"{method} is not implemented by this server"

    def refuse(request: Any, context: grpc.ServicerContext) -> NoReturn:
        errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, "VaultError", message)

    streaming = (handler.request_streaming, handler.response_streaming)
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[streaming]
    return factory(refuse, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("the server is shutting down; retry on another replica or "
                        "after it restarts")


def _audit_version(version: Callable[[Request, Response | None], int | None],
                   request: Request, response: Response | None) -> int | None:
    """The version to audit; never an error of its own."""
    if isinstance(request, Malformed):
        return None
    try:
        return version(request, response)
    except (AttributeError, TypeError, ValueError):
        return None


def _count(record: Callable[[str, str, int], None], entries: list[Entry]) -> None:
    """Add a batch's operations to the counters, once per (operation, result)."""
    tally: dict[tuple[str, str], int] = {}
    for op, _key, _version, result in entries:
        pair = (op, result)
        tally[pair] = tally.get(pair, 0) + 1
    for (op, result), n in tally.items():
        record(op, result, n)
