"""What each kind of method does inside the edge's guard.

The guard (``secretvault.vault.edge.interceptor``) runs the same prologue
and epilogue around every call.  Between them runs the method's
:class:`Stage`: its policy checks, how the servicer is called, what success
writes to the audit log, and what the line of a failed call names.  There
are four: a unary call, a server-streaming call (WatchStats), a batch and a
stream; the last two check and audit each operation they carry under its
own name.  A stage is built once per listener and method; a call only runs
it, with a :class:`Call` the stage fills in as it learns.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from secretvault.api.errors import InvalidKeyName, PermissionDenied
from secretvault.vault.edge.limits import LongCall, check_batch_size
from secretvault.vault.edge.methods import (
    BATCH,
    LIST_KEYS,
    METHODS,
    STREAM,
    WATCH_STATS,
    MethodSpec,
    Request,
    Response,
    Target,
    audit_version,
    batch_entries,
    batch_targets,
    op_record,
    op_target,
    sized,
)
from secretvault.vault.edge.state import Edge
from secretvault.vault.handlers import Malformed
from secretvault.vault.policy import UNKNOWN, Policy
from secretvault.vault.servicers import watch_interval

Check = Callable[[str, str, str | None], None]
Version = Callable[[Request, Response | None], int | None]


class Call:
    """One call at the edge: who makes it, and what its audit line names if it fails.

    The guard makes one per call; the method's stage fills it in as it
    learns: the key once the request is read, a batch's size, operations and
    the operation denied, a stream's operation at hand, the long-lived call
    counted for it (which the guard uncounts, however the call ends).
    """

    __slots__ = ("identity", "key", "long", "operation", "size", "targets")

    def __init__(self, operation: str) -> None:
        self.identity = UNKNOWN
        self.operation = operation
        self.key: str | None = None
        self.size = 0
        self.targets: Sequence[Target] = ()
        self.long: LongCall | None = None


@dataclass(frozen=True, slots=True)
class Stage:
    """What one method does inside the guard."""

    #: the name its errors and metrics go by, and its audit lines unless it
    #: carries operations ("sign", "batch", "stream")
    where: str
    #: the method's own part: checks, the servicer's call, the audit of success
    #: (a generator when ``streaming``)
    serve: Callable[[Call, Request, grpc.ServicerContext], Response]
    #: count and audit a call that failed, with the status name it is answered with
    refused: Callable[[Call, Request, str], None]
    #: answers with a stream of messages
    streaming: bool


@dataclass(frozen=True, slots=True)
class Site:
    """Where the stages of one listener run."""

    edge: Edge
    listener: str
    #: the policy check; None on a listener whose fixed identity the policy
    #: lets do everything (the owner's): no operation there needs one
    check: Check | None

    def note(self, identity: str, operation: str, key: str | None, version: int | None,
             result: str) -> None:
        """Count, then audit one line (raises AuditUnavailable when failing closed)."""
        self.edge.counters.record(operation, result)
        self.edge.audit.write_one(identity, self.listener, operation, key, version, result)


#: operations that make a key version: the servicer is told who makes it
CHARGED_OPERATIONS = frozenset({"create_key", "import_key", "rotate_key"})


def stage_for(site: Site, method: str, handler: grpc.RpcMethodHandler) -> Stage | None:
    """The stage of a method in the edge's table (None: a client-streaming form
    the edge has no code for)."""
    if method == BATCH:
        return _batch(site, handler.unary_unary)
    if method == STREAM:
        return _stream(site, handler.stream_stream)
    spec = METHODS[method]
    if handler.unary_unary is not None:
        return _unary(site, spec, handler.unary_unary, lists=method == LIST_KEYS)
    if handler.unary_stream is not None:
        return _unary_stream(site, spec, handler.unary_stream, watch=method == WATCH_STATS)
    return None


def _one_line(site: Site, version_of: Version | None) -> Callable[[Call, Request, str], None]:
    """The failure audit of a call that is one line: what it was doing, as far as known."""
    note = site.note

    def refused(call: Call, request: Request, result: str) -> None:
        version = None if version_of is None else audit_version(version_of, request, None)
        note(call.identity, call.operation, call.key, version, result)

    return refused


def _unary(site: Site, spec: MethodSpec, inner: Callable[..., Response], *, lists: bool
           ) -> Stage:
    listener = site.listener
    lister = site.edge.policy.lister
    check = site.check
    count = site.edge.counters.record
    write_one = site.edge.audit.write_one
    operation = spec.operation
    key_of = spec.key
    version_of = spec.version
    mutating = spec.mutating
    # a new key version is charged to the identity that makes it (vault.quotas)
    charged = operation in CHARGED_OPERATIONS

    def serve(call: Call, request: Request, context: grpc.ServicerContext) -> Response:
        identity = call.identity
        # an oversized name is refused before the call's audit line could name it
        key = call.key = sized(key_of(request))
        if check is not None:
            check(identity, operation, key)
        if mutating:
            # a change is audited before it is made: if this line
            # cannot be written (failing closed), nothing changes
            write_one(identity, listener, operation, key,
                      audit_version(version_of, request, None), "attempt")
        if lists:
            # the names this identity may list, handed to the servicer,
            # which filters them before it cuts the page
            response = inner(request, context, lister(identity))
        elif charged:
            response = inner(request, context, identity)
        else:
            response = inner(request, context)
        count(operation, "ok")
        write_one(identity, listener, operation, key,
                  audit_version(version_of, request, response), "ok")
        return response

    return Stage(operation, serve, _one_line(site, version_of), streaming=False)


def _unary_stream(site: Site, spec: MethodSpec,
                  inner: Callable[[Request, grpc.ServicerContext], Iterator[Response]],
                  *, watch: bool) -> Stage:
    listener = site.listener
    check = site.check
    long_calls = site.edge.long_calls
    per_listener = site.edge.long_calls_per_listener
    operation = spec.operation
    note = site.note
    clock = time.perf_counter

    def serve(call: Call, request: Request, context: grpc.ServicerContext
              ) -> Iterator[Response]:
        identity = call.identity
        if check is not None:
            check(identity, operation, None)
        if watch:
            # a watch sends an update every interval: it is idle when
            # one has not gone out for an interval past the idle limit
            call.long = long_calls.open(identity, listener, per_listener, context,
                                        watch_interval(request.interval_seconds))
        # one line when the watch begins: a watch may outlive the log's rotation
        note(identity, operation, None, None, "ok")
        long = call.long
        for item in inner(request, context):
            if long is not None:
                long.last = clock()
            yield item

    return Stage(operation, serve, _one_line(site, None), streaming=True)


def _batch(site: Site, inner: Callable[[Request, grpc.ServicerContext], Response]) -> Stage:
    listener = site.listener
    check = site.check
    count = site.edge.counters.record
    write_entries = site.edge.audit.write_entries
    write_summary = site.edge.audit.write_summary
    policy = site.edge.policy
    max_batch = site.edge.max_batch

    def serve(call: Call, request: Request, context: grpc.ServicerContext) -> Response:
        identity = call.identity
        operations = request.operations
        size = call.size = len(operations)
        # the size first: nothing is looked at (or audited) one
        # operation at a time in a batch that will not run
        check_batch_size(size, max_batch)
        targets = call.targets = batch_targets(operations)
        # all or nothing: a batch with one denied operation runs none (each
        # (operation, key) asked once, in order: the first denied is named)
        if check is not None:
            for op, key in dict.fromkeys(targets):
                if op != "invalid":
                    try:
                        check(identity, op, key)
                    except PermissionDenied:
                        call.operation, call.key = op, key  # the summary names it
                        raise
            # nothing denied, because nothing checkable was asked (an
            # empty batch, or operations with none set): still nothing
            # for an identity without a crypto grant
            if not policy.may_stream(identity):
                raise _no_crypto_grant(policy, identity, "call Batch")
        response = inner(request, context)
        # one line per operation, all written at once; the results go
        # back only once that write succeeded (fail closed)
        entries, tally = batch_entries(targets, response.results)
        for (op, outcome), n in tally.items():
            count(op, outcome, n)
        write_entries(identity, listener, entries)
        return response

    def refused(call: Call, request: Request, result: str) -> None:
        # the batch did not run (or its answer is lost): one line for
        # all of it, however many operations it carried
        by_op: dict[str, int] | None = None
        if call.targets:
            by_op = collections.Counter(o for o, _ in call.targets)
            for o, n in by_op.items():
                count(o, result, n)
        else:
            count("batch", result)
        write_summary(call.identity, listener, call.operation, call.key, result,
                      call.size, by_op)

    return Stage("batch", serve, refused, streaming=False)


def _stream(site: Site, inner: Callable[[Iterable[Request], grpc.ServicerContext],
                                        Iterator[Response]]) -> Stage:
    listener = site.listener
    check = site.check
    policy = site.edge.policy
    long_calls = site.edge.long_calls
    per_listener = site.edge.long_calls_per_listener
    count = site.edge.counters.record
    write_one = site.edge.audit.write_one
    metrics = site.edge.metrics
    clock = time.perf_counter
    refused = _one_line(site, None)

    def serve(call: Call, requests: Iterator[Request], context: grpc.ServicerContext
              ) -> Iterator[Response]:
        identity = call.identity
        # an identity that may do nothing a stream carries could only
        # hold a thread with it: refused before it waits for anything
        if check is not None and not policy.may_stream(identity):
            raise _no_crypto_grant(policy, identity, "open a Stream")
        long = call.long = long_calls.open(identity, listener, per_listener, context)
        pending: collections.deque[tuple[str, str | None, float]] = collections.deque()

        def checked() -> Iterator[Request]:
            for op in requests:
                now = long.last = clock()
                if isinstance(op, Malformed):
                    call.operation, call.key = "stream", None
                    raise op.error()
                try:
                    target = op_target(op)
                except InvalidKeyName:
                    # its line names the operation, never the oversized key
                    call.operation, call.key = str(op.WhichOneof("op")), None
                    raise
                if target[0] != "invalid":
                    # a failure from here on is this operation's
                    call.operation, call.key = target
                    if check is not None:
                        check(identity, *target)
                pending.append((target[0], target[1], now))
                yield op

        for result in inner(checked(), context):
            op, key, start = pending.popleft()
            outcome, version = op_record(result)
            count(op, outcome)
            write_one(identity, listener, op, key, version, outcome)
            if metrics is not None:
                metrics.observe(op, clock() - start)
            yield result
        if long.timed_out or not context.is_active():
            # cancelled (for idling, or by the client) while waiting for
            # a request: grpc may end the request iterator quietly
            # instead of raising, as if the client had finished
            refused(call, requests, grpc.StatusCode.CANCELLED.name)

    return Stage("stream", serve, refused, streaming=True)


def _no_crypto_grant(policy: Policy, identity: str, what: str) -> PermissionDenied:
    return PermissionDenied(
        f"identity {identity!r} may not {what}: it holds no sign, verify, encrypt, decrypt, "
        f"mac or verify_mac grant ({policy.source})")
