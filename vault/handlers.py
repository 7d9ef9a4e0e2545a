"""How the vault's services are served: method handlers built from the descriptors.

Each method's handler is made from the generated service descriptors, so a
method added to the .proto is served (or fails loudly, if its servicer
lacks it) after regeneration.  The request deserializers never raise: a
request that does not parse becomes :class:`Malformed`, which the edge
refuses with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message as _message
from google.protobuf import message_factory

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2, stats_pb2
from secretvault.api.errors import ERROR_METADATA_KEY, InvalidArgument
from secretvault.vault.servicers import CryptoServicer, KeyServicer, StatsServicer

# --- decoding ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Malformed:
    """Stands in for a request message that did not parse.

    grpcio answers INTERNAL ("Exception deserializing request!") when a
    deserializer raises, which would blame the server for the client's
    bytes; so the deserializers return this instead and the edge turns it
    into INVALID_ARGUMENT.
    """

    type_name: str
    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            f"the request is not a valid {self.type_name} message: {self.reason}")


def _safe_parser(cls: type[_message.Message]
                 ) -> Callable[[bytes], _message.Message | Malformed]:
    type_name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> _message.Message | Malformed:
        try:
            return cls.FromString(data)
        except Exception as e:  # any failure to parse is about the client's bytes
            return Malformed(type_name, type(e).__name__)

    return parse


def parse_checked(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` of a service the vault hosts but does not write (health
    checking, reflection), with a decoder that never raises: a request that
    does not parse is answered INVALID_ARGUMENT, naming the error class as
    every vault method does, and never reaches the servicer."""
    parse = handler.request_deserializer
    cls = getattr(parse, "__self__", None)
    type_name = getattr(getattr(cls, "DESCRIPTOR", None), "full_name", "request")

    def decode(data: bytes) -> object:
        try:
            return parse(data)
        except Exception as e:  # any failure to parse is about the client's bytes
            return Malformed(type_name, type(e).__name__)

    def admit(request: object, context: grpc.ServicerContext) -> object:
        if isinstance(request, Malformed):
            context.set_trailing_metadata(((ERROR_METADATA_KEY, "InvalidArgument"),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.error()))
        return request

    def each(requests: Iterator[object], context: grpc.ServicerContext) -> Iterator[object]:
        for request in requests:
            yield admit(request, context)

    shape = (handler.request_streaming, handler.response_streaming)
    inner = (handler.unary_unary or handler.unary_stream or handler.stream_unary
             or handler.stream_stream)

    def behavior(request: Any, context: grpc.ServicerContext) -> Any:
        if shape[0]:
            return inner(each(request, context), context)
        return inner(admit(request, context), context)

    return HANDLER_FACTORIES[shape](behavior, request_deserializer=decode,
                                    response_serializer=handler.response_serializer)


# --- registration -------------------------------------------------------------------

_SERVICES = (
    (keys_pb2.DESCRIPTOR.services_by_name["KeyService"], "keys"),
    (crypto_pb2.DESCRIPTOR.services_by_name["CryptoService"], "crypto"),
    (stats_pb2.DESCRIPTOR.services_by_name["StatsService"], "stats"),
)

#: the full names of the vault's services (health and reflection list them)
SERVICE_NAMES: tuple[str, ...] = tuple(s.full_name for s, _ in _SERVICES)


def method_paths() -> tuple[str, ...]:
    """Every method the vault serves, as gRPC names it (``/package.Service/Method``)."""
    return tuple(f"/{service.full_name}/{method.name}"
                 for service, _ in _SERVICES for method in service.methods)


#: grpcio's handler factory for each (request streaming, response streaming)
#: shape of a method (the edge wraps handlers in the same shapes)
HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def generic_handlers(
    keys: KeyServicer, crypto: CryptoServicer, stats: StatsServicer
) -> list[grpc.GenericRpcHandler]:
    """Method handlers for the three services, with deserializers that never raise.

    Built from the service descriptors, so a method added to the .proto is
    served (or fails loudly here, if the servicer lacks it) after
    regeneration.
    """
    servicers: dict[str, object] = {"keys": keys, "crypto": crypto, "stats": stats}
    out: list[grpc.GenericRpcHandler] = []
    for service, which in _SERVICES:
        servicer = servicers[which]
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            request_cls = message_factory.GetMessageClass(method.input_type)
            response_cls = message_factory.GetMessageClass(method.output_type)
            factory = HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
            handlers[method.name] = factory(
                getattr(servicer, method.name),
                request_deserializer=_safe_parser(request_cls),
                response_serializer=response_cls.SerializeToString,
            )
        out.append(grpc.method_handlers_generic_handler(service.full_name, handlers))
    return out
