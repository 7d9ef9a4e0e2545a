"""The server edge: identity, policy, errors, audit and metrics, for every call.

One :class:`EdgeInterceptor` per listener wraps every method of the vault's
three services (health checking and reflection pass through untouched).
For each call it:

1. refuses new calls with UNAVAILABLE (``ShuttingDown``) once draining began;
2. establishes the identity: the listener's own (a Unix socket file only
   that identity can open), or the verified client certificate on mutual
   TLS (its SAN URI, else its CN, mapped through the policy).  Nothing the
   client sends can change it;
3. decodes (a request that did not parse is INVALID_ARGUMENT) and checks
   the policy — the one place it is checked: every unary call, every
   operation of a batch (all or nothing: one denied operation denies the
   batch and nothing runs) and every operation of a stream (a denied one
   ends the stream with PERMISSION_DENIED; the ones before it were served);
4. maps any error to its status through ``vault.errors`` (the one table);
5. writes the audit lines and counts the operations; when the audit log
   cannot be written, the result is withheld (fail closed, UNAVAILABLE).
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

from clients.errors import ShuttingDown, VaultError
from vault import errors
from vault.audit import AuditLog, AuditRecord, Entry
from vault.metrics import Metrics
from vault.policy import Policy
from vault.servicers import Malformed
from vault.stats import OperationCounters

log = logging.getLogger("secretvault.server")

Request = Any
Response = Any


@dataclass(frozen=True, slots=True)
class MethodSpec:
    operation: str
    key: Callable[[Request], str | None]
    version: Callable[[Request, Response | None], int | None]


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
    _KS + "CreateKey": MethodSpec("create_key", _name, _primary),
    _KS + "GetImportKey": MethodSpec("get_import_key", _none, _no_version),
    _KS + "ImportKey": MethodSpec("import_key", _name, _primary),
    _KS + "GetKey": MethodSpec("get_key", _name, _primary),
    _KS + "GetPublicKey": MethodSpec("get_public_key", _name, _response_version),
    _KS + "ListKeys": MethodSpec("list_keys", _none, _no_version),
    _KS + "RotateKey": MethodSpec("rotate_key", _name, _primary),
    _KS + "SetMinDecryptionVersion": MethodSpec("set_min_decryption_version", _name,
                                                _requested),
    _KS + "DeleteKeyVersion": MethodSpec("delete_key_version", _name, _requested),
    _KS + "DeleteKey": MethodSpec("delete_key", _name, _no_version),
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
            return "anonymous"
        pem = pems[0]
        with self._lock:
            cached = self._cache.get(pem)
        if cached is not None:
            return cached
        subject = certificate_subject(pem)
        name = self._policy.tls_identity(subject) if subject else "anonymous"
        with self._lock:
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[pem] = name
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


# --- the interceptor ------------------------------------------------------------------


class Edge:
    """State the listeners share: policy, audit, counters, metrics, draining."""

    def __init__(
        self,
        policy: Policy,
        audit: AuditLog,
        counters: OperationCounters,
        metrics: Metrics | None,
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.counters = counters
        self.metrics = metrics
        self.draining = threading.Event()


class EdgeInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """The edge of one listener.

    Everything that does not change from call to call -- the method's
    policy name and audit accessors, the listener's fixed identity and
    whether the policy restricts it, the metrics child -- is looked up once,
    when a method's handler is wrapped; a call only does the per-call part.
    """

    def __init__(self, edge: Edge, authenticator: Authenticator) -> None:
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
        wrapped = self._wrap(method, handler)
        if method in METHODS or method in (BATCH, STREAM):
            self._wrapped[method] = wrapped
        return wrapped

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
        spec = METHODS.get(method)
        if spec is None:
            return handler  # health checking, reflection
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(spec, handler.unary_unary, filter_list=method == LIST_KEYS),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_stream_rpc_method_handler(
            self._unary_stream(spec, handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    # --- pieces ---------------------------------------------------------------------

    def _begin(self, context: grpc.ServicerContext) -> str:
        if self._edge.draining.is_set():
            raise _shutting_down()
        return self._auth.identity(context)

    def _records(self, records: list[AuditRecord]) -> None:
        """Count, then audit (raises AuditUnavailable when failing closed)."""
        for r in records:
            self._edge.counters.record(r.operation, r.result)
        self._edge.audit.write(records)

    def _fail(self, context: grpc.ServicerContext, exc: BaseException, where: str,
              audit: Callable[[str], list[AuditRecord]]) -> NoReturn:
        if not isinstance(exc, VaultError) and (isinstance(exc, grpc.RpcError)
                                                or not context.is_active()):
            # the client went away (cancelled, or past its deadline) and grpc
            # raised out of the request iterator: nobody to answer, and no bug
            code, name, message = (grpc.StatusCode.CANCELLED, "VaultError",
                                   "the call was cancelled or its deadline passed")
        else:
            code, name, message = errors.describe(exc, where)
        try:
            self._records(audit(code.name))
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
        policy = self._edge.policy
        check = self._check
        draining = self._edge.draining
        count = self._edge.counters.record
        write_one = self._edge.audit.write_one
        operation = spec.operation
        key_of = spec.key
        version_of = spec.version
        observe = self._observer(operation)
        clock = time.perf_counter
        fail = self._fail

        def behavior(request: Request, context: grpc.ServicerContext) -> Response:
            start = clock() if observe is not None else 0.0
            identity = "unknown"
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
                response = inner(request, context)
                if filter_list and not policy.unrestricted(identity):
                    visible = [k for k in response.keys
                               if policy.allows(identity, "list_keys", k.name)]
                    del response.keys[:]
                    response.keys.extend(visible)
                try:
                    version = version_of(request, response)
                except (AttributeError, TypeError, ValueError):
                    version = None
                count(operation, "ok")
                write_one(identity, listener, operation, key, version, "ok")
            except Exception as e:
                fail(context, e, operation, lambda result: [AuditRecord(
                    identity, listener, operation, key,
                    _audit_version(version_of, request, None), result)])
            finally:
                if observe is not None:
                    observe(clock() - start)
            return response

        return behavior

    def _unary_stream(self, spec: MethodSpec,
                      inner: Callable[[Request, grpc.ServicerContext], Iterator[Response]]
                      ) -> Callable[[Request, grpc.ServicerContext], Iterator[Response]]:
        listener = self._auth.listener
        check = self._check

        def behavior(request: Request, context: grpc.ServicerContext) -> Iterator[Response]:
            identity = "unknown"

            def record(result: str) -> list[AuditRecord]:
                return [AuditRecord(identity, listener, spec.operation, None, None, result)]

            try:
                identity = self._begin(context)
                if isinstance(request, Malformed):
                    raise request.error()
                if check is not None:
                    check(identity, spec.operation, None)
                # one line when the watch begins: a watch may outlive the log's rotation
                self._records(record("ok"))
                yield from inner(request, context)
            except Exception as e:
                self._fail(context, e, spec.operation, record)

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
        observe = self._observer("batch")
        clock = time.perf_counter
        fail = self._fail

        def behavior(request: Request, context: grpc.ServicerContext) -> Response:
            start = clock()
            identity = "unknown"
            targets: list[tuple[str, str | None]] = []

            def record(result: str) -> list[AuditRecord]:
                if not targets:
                    return [AuditRecord(identity, listener, "batch", None, None, result)]
                return [AuditRecord(identity, listener, op, key, None, result)
                        for op, key in targets]

            try:
                if draining.is_set():
                    raise _shutting_down()
                identity = fixed if fixed is not None else identify(context)
                if isinstance(request, Malformed):
                    raise request.error()
                targets = [_op_target(op) for op in request.operations]
                # all or nothing: a batch with one denied operation runs none
                if check is not None:
                    for op, key in targets:
                        if op != "invalid":
                            check(identity, op, key)
                response = inner(request, context)
                # one line per operation, all written at once; the results go
                # back only once that write succeeded (fail closed)
                entries = [(op, key, version, outcome) for (op, key), (outcome, version)
                           in zip(targets, map(_op_record, response.results), strict=False)]
                _count(count, entries)
                write_entries(identity, listener, entries)
            except Exception as e:
                fail(context, e, "batch", record)
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
        count = self._edge.counters.record
        write_one = self._edge.audit.write_one
        metrics = self._edge.metrics
        clock = time.perf_counter

        def behavior(requests: Iterator[Request], context: grpc.ServicerContext
                     ) -> Iterator[Response]:
            identity = "unknown"
            pending: collections.deque[tuple[str, str | None, float]] = collections.deque()
            current: list[tuple[str, str | None]] = []

            def checked() -> Iterator[Request]:
                for op in requests:
                    if isinstance(op, Malformed):
                        current[:] = [("stream", None)]
                        raise op.error()
                    target = _op_target(op)
                    if target[0] != "invalid":
                        current[:] = [target]
                        if check is not None:
                            check(identity, *target)
                    pending.append((target[0], target[1], clock()))
                    yield op

            def record(result: str) -> list[AuditRecord]:
                op, key = current[0] if current else ("stream", None)
                return [AuditRecord(identity, listener, op, key, None, result)]

            try:
                identity = self._begin(context)
                for result in inner(checked(), context):
                    op, key, start = pending.popleft()
                    outcome, version = _op_record(result)
                    count(op, outcome)
                    write_one(identity, listener, op, key, version, outcome)
                    if metrics is not None:
                        metrics.observe(op, clock() - start)
                    yield result
            except Exception as e:
                self._fail(context, e, "stream", record)

        return behavior


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
