"""The server edge's one wrapper: identity, policy, limits, errors, audit and metrics.

One :class:`EdgeInterceptor` per listener wraps every method of the vault's
three services.  Health checking and reflection pass through unchecked
(only a request that does not parse is refused, INVALID_ARGUMENT);
any other method the method table (``secretvault.vault.edge.methods``) does
not describe is refused with UNIMPLEMENTED, so nothing runs unchecked.
For each call it:

1. refuses new calls with UNAVAILABLE (``ShuttingDown``) once draining began;
2. establishes the identity (``secretvault.vault.edge.identity``): the
   listener's own, or the verified client certificate's.  Nothing the
   client sends can change it;
3. decodes (a request that did not parse is INVALID_ARGUMENT) and checks
   the policy — the one place it is checked: every unary call, every
   operation of a batch (after its size: all or nothing, one denied
   operation denies the batch and nothing runs) and every operation of a
   stream (a denied one ends the stream with PERMISSION_DENIED; the ones
   before it were served).  A Stream is refused when it opens unless the
   identity holds some crypto grant.  ListKeys hands the servicer the names
   the caller may list;
4. applies the limits (``secretvault.vault.edge.limits``): a batch's size,
   and the long-lived calls (Stream, WatchStats) per identity and per
   listener, cancelled when idle;
5. maps any error to its status through ``secretvault.vault.errors`` (the one table);
6. writes the audit lines and counts the operations.  An operation that
   changes keys is audited as an ``attempt`` before it runs and refused
   when that line cannot be written; for any other, the result is withheld
   when its line cannot be written (fail closed, UNAVAILABLE).  A batch
   that does not run is one summary line, not a line per operation.

Steps 1, 2, the decoding check of 3 and 5 are the same for every method:
:meth:`EdgeInterceptor._guard` writes them once.  What differs from method
to method — which checks, how the servicer is called, what success writes
to the audit log and what a failure's line names — is the method's stage
(``secretvault.vault.edge.stages``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc

from secretvault.api.errors import ShuttingDown, VaultError
from secretvault.vault import errors
from secretvault.vault.edge.identity import Authenticator
from secretvault.vault.edge.methods import (
    BATCH,
    METHODS,
    PASS_THROUGH,
    STREAM,
    Request,
    Response,
    check_methods,
)
from secretvault.vault.edge.stages import Call, Site, Stage, stage_for
from secretvault.vault.edge.state import Edge
from secretvault.vault.handlers import HANDLER_FACTORIES, Malformed, parse_checked

log = logging.getLogger("secretvault.server")

Behavior = Callable[[Request, grpc.ServicerContext], Response]


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
        check = (None if fixed is not None and edge.policy.unrestricted(fixed)
                 else edge.policy.check)
        self._site = Site(edge, authenticator.listener, check)

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
            stage = stage_for(self._site, method, handler)
            # None: a client-streaming form the edge has no code for
            wrapped = (_unlisted(method, handler) if stage is None
                       else _handler_like(handler, self._guard(stage)))
            self._wrapped[method] = wrapped
            return wrapped
        if method.startswith(PASS_THROUGH):
            # health checking, reflection: unchecked, but bytes that do not
            # parse are the client's mistake (grpcio would answer INTERNAL)
            wrapped = self._wrapped[method] = parse_checked(handler)
            return wrapped
        # served, yet unknown to the edge: it would run with no policy check
        return _unlisted(method, handler)

    def _guard(self, stage: Stage) -> Behavior:
        """The one wrapper around every method: the prologue and the epilogue.

        Prologue: refused while draining, the identity established, a request
        that did not parse refused.  Then the stage's part.  Epilogue: an
        error is audited and mapped to its status (:meth:`_fail`), a unary
        call's latency observed, a long-lived call uncounted.  The two forms
        differ only in how the answer leaves, returned or yielded: a
        generator must run its stream inside its own ``try``.
        """
        fixed = self._auth.fixed_identity
        identify = self._auth.identity
        draining = self._edge.draining
        where = stage.where
        serve = stage.serve
        fail = self._fail

        def admit(call: Call, request: Request, context: grpc.ServicerContext) -> None:
            if draining.is_set():
                raise _shutting_down()
            call.identity = fixed if fixed is not None else identify(context)
            if isinstance(request, Malformed):
                raise request.error()

        if stage.streaming:
            uncount = self._edge.long_calls.close

            def answers(request: Request, context: grpc.ServicerContext) -> Iterator[Response]:
                call = Call(where)
                try:
                    admit(call, request, context)
                    yield from serve(call, request, context)
                except Exception as e:
                    fail(context, e, stage, call, request)
                finally:
                    if call.long is not None:
                        uncount(call.long)

            return answers

        metrics = self._edge.metrics
        observe = metrics.observer(where) if metrics is not None else None
        clock = time.perf_counter

        def answer(request: Request, context: grpc.ServicerContext) -> Response:
            start = clock() if observe is not None else 0.0
            call = Call(where)
            try:
                admit(call, request, context)
                return serve(call, request, context)
            except Exception as e:
                fail(context, e, stage, call, request)
            finally:
                if observe is not None:
                    observe(clock() - start)

        return answer

    def _fail(self, context: grpc.ServicerContext, exc: BaseException, stage: Stage,
              call: Call, request: Request) -> NoReturn:
        if not isinstance(exc, VaultError) and (isinstance(exc, grpc.RpcError)
                                                or not context.is_active()):
            # the client went away (cancelled, or past its deadline) or the
            # call was cancelled idle, and grpc raised out of the request
            # iterator: nobody to answer, and no bug
            code, name, message = (grpc.StatusCode.CANCELLED, "VaultError",
                                   "the call was cancelled or its deadline passed")
        else:
            code, name, message = errors.describe(exc, stage.where)
        try:
            stage.refused(call, request, code.name)
        except VaultError as e:
            # fail closed: not even an error is answered unaudited
            code, name, message = errors.describe(e, stage.where)
        errors.abort(context, code, name, message)


def _handler_like(handler: grpc.RpcMethodHandler, behavior: Callable[..., object]
                  ) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape and (de)serializers that runs ``behavior``."""
    factory = HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(behavior, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


def _unlisted(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler that refuses ``method``: served, but not in the edge's table."""
    log.error("refusing %s: the server edge has no policy entry for it", method)
    message = f"{method} is not implemented by this server"

    def refuse(request: Request, context: grpc.ServicerContext) -> NoReturn:
        errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, "VaultError", message)

    return _handler_like(handler, refuse)


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("the server is shutting down; retry on another replica or "
                        "after it restarts")
