"""The gRPC servicers: decode the request, call the keyring, encode the reply.

Nothing here checks policy, writes audit lines or maps errors to status
codes: the edge interceptor (``secretvault.vault.edge``) does all of that, once,
for every method.  A servicer raises :class:`~secretvault.api.errors.VaultError`
for anything wrong with the request.

Batch and stream forms run each operation through the same functions as the
unary calls; a failed operation becomes an ``OperationError`` carrying the
status its unary call would have returned, and the others still run.
"""

from __future__ import annotations

import base64
import collections
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message as _message
from google.protobuf import message_factory

from secretvault.api import framing
from secretvault.api._proto.secretvault.v1 import (
    crypto_pb2,
    crypto_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)
from secretvault.api.errors import InvalidArgument, RequestTooLarge
from secretvault.vault import errors
from secretvault.vault.crypto import KeyType
from secretvault.vault.keyring import KeyInfo, Keyring
from secretvault.vault.stats import StatsSource, to_proto

#: the most operations one BatchRequest may carry (documented in crypto.proto)
MAX_BATCH_OPERATIONS = 10_000
#: ListKeys page size: default and maximum (documented in keys.proto)
MAX_PAGE_SIZE = 1000
#: a batch hands its turn to a waiting batch after this many operations (a
#: power of two, and a multiple of 8: it is tested with a mask where the
#: deadline is, every 8 operations)
BATCH_TURN_OPERATIONS = 64


def _nothing(name: str) -> bool:
    return False


#: which key names the caller of ListKeys may see, set by the edge for the call
#: (None: every name).  Unset, nothing is visible: a listing that did not pass
#: the edge shows no names rather than all of them.
LIST_VISIBLE: contextvars.ContextVar[Callable[[str], bool] | None] = contextvars.ContextVar(
    "secretvault_list_visible", default=_nothing)

KEY_TYPES: dict[int, KeyType] = {
    keys_pb2.KEY_TYPE_ED25519: KeyType.ED25519,
    keys_pb2.KEY_TYPE_X25519: KeyType.X25519,
    keys_pb2.KEY_TYPE_XCHACHA20_POLY1305: KeyType.XCHACHA20_POLY1305,
    keys_pb2.KEY_TYPE_HMAC_SHA256: KeyType.HMAC_SHA256,
}
KEY_TYPE_NUMBERS: dict[KeyType, Any] = {v: k for k, v in KEY_TYPES.items()}

FORMATS: dict[int, str] = {
    keys_pb2.PUBLIC_KEY_FORMAT_UNSPECIFIED: "raw",
    keys_pb2.PUBLIC_KEY_FORMAT_RAW: "raw",
    keys_pb2.PUBLIC_KEY_FORMAT_PEM: "pem",
    keys_pb2.PUBLIC_KEY_FORMAT_OPENSSH: "openssh",
    keys_pb2.PUBLIC_KEY_FORMAT_JWK: "jwk",
}


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


def _safe_parser(cls: type[_message.Message]) -> Callable[[bytes], Any]:
    type_name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as e:  # any failure to parse is about the client's bytes
            return Malformed(type_name, type(e).__name__)

    return parse


def _key_type(number: int) -> KeyType:
    if number == keys_pb2.KEY_TYPE_UNSPECIFIED:
        raise InvalidArgument("the key type is required (ed25519, x25519, "
                              "xchacha20-poly1305 or hmac-sha256)")
    kt = KEY_TYPES.get(number)
    if kt is None:
        raise InvalidArgument(f"unknown key type number {number}")
    return kt


def _version(number: int) -> int | None:
    """0 means 'the primary version' wherever the API takes a version."""
    return number or None


def _token_version(token: bytes) -> int:
    """The key version in a token's header (the keyring has already checked it)."""
    _, _, version = framing.HEADER.unpack_from(token)
    assert isinstance(version, int)
    return version


def key_to_proto(info: KeyInfo) -> keys_pb2.Key:
    key = keys_pb2.Key(
        name=info.name,
        type=KEY_TYPE_NUMBERS[info.type],
        primary_version=info.primary_version,
        min_decryption_version=info.min_decryption_version,
        labels=dict(info.labels),
    )
    key.create_time.FromNanoseconds(int(info.created * 1e9))
    for v in info.versions:
        kv = key.versions.add(version=v.version, public_key=v.public_key or b"",
                              damaged=v.damaged or "")
        kv.create_time.FromNanoseconds(int(v.created * 1e9))
    return key


def _page_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode("ascii")


def _after(token: str) -> str:
    try:
        return base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        raise InvalidArgument("page_token is not one returned by ListKeys") from None


# --- KeyService ---------------------------------------------------------------


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, keyring: Keyring) -> None:
        self._ring = keyring

    def CreateKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        info = self._ring.create(request.name, _key_type(request.type), dict(request.labels))
        return key_to_proto(info)

    def GetImportKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return keys_pb2.GetImportKeyResponse(public_key=self._ring.import_public_key)

    def ImportKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        info = self._ring.import_wrapped(
            request.name, _key_type(request.type), request.wrapped_key, dict(request.labels)
        )
        return key_to_proto(info)

    def GetKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return key_to_proto(self._ring.get(request.name))

    def GetPublicKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        fmt = FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"unknown public key format number {request.format}")
        info = self._ring.get(request.name)
        version = request.version or info.primary_version
        public = self._ring.public_key(request.name, version, fmt)
        return keys_pb2.GetPublicKeyResponse(
            public_key=public,
            version=version,
            format=request.format or keys_pb2.PUBLIC_KEY_FORMAT_RAW,
            type=KEY_TYPE_NUMBERS[info.type],
        )

    def ListKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        size = min(request.page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _after(request.page_token) if request.page_token else None
        # the caller's visibility filters the names before the page is cut: the
        # page is full, and the token (the page's last name) is one it may see
        page, more = self._ring.page(limit=size, prefix=request.prefix, after=after,
                                     visible=LIST_VISIBLE.get())
        token = _page_token(page[-1].name) if more else ""
        return keys_pb2.ListKeysResponse(keys=[key_to_proto(k) for k in page],
                                         next_page_token=token)

    def RotateKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        return key_to_proto(self._ring.rotate(request.name))

    def SetMinDecryptionVersion(self, request: Any, context: grpc.ServicerContext) -> Any:
        return key_to_proto(self._ring.set_min_decryption_version(request.name, request.version))

    def DeleteKeyVersion(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.version == 0:
            raise InvalidArgument("give the version to delete (versions start at 1)")
        return key_to_proto(self._ring.delete_version(request.name, request.version))

    def DeleteKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._ring.delete(request.name)
        return keys_pb2.DeleteKeyResponse()


# --- CryptoService --------------------------------------------------------------


class BatchTurns:
    """Batches take turns at the crypto, :data:`BATCH_TURN_OPERATIONS` at a time,
    in the order they asked.

    Why turns: cffi releases the GIL around every libsodium call, so batches
    running side by side hand the GIL over (and wake a thread) at every
    operation; measured on 2 cores, that raised the server's CPU per batched
    sign from about 60 to 90 us and lowered the rate (re-measured with these
    turns, 4 clients of 100-operation batches, client and server in one
    process: 38-47 us of CPU per sign with turns, 42-60 us without, rates
    within the run-to-run noise of a shared machine).  Why short ones, handed
    on in arrival order: a turn held for a whole batch let one caller's
    10,000-operation batch hold every other batch up for its full run (and
    ``threading.Lock`` is not fair, so a waiter could lose again and again).
    Now a batch waits at most one turn of each batch ahead of it, and a
    waiting batch whose call ends (cancelled, past its deadline) leaves the
    queue.  Unary calls and streams never take a turn.
    """

    #: how often a waiting batch looks whether its call is still alive (seconds)
    POLL = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: one closed gate per waiting batch, oldest first; read without the lock
        #: (a stale answer only delays a hand-over by one turn)
        self.waiting: collections.deque[threading.Lock] = collections.deque()
        #: turns nobody holds (one batch at a time runs)
        self._free = 1

    def take(self, is_active: Callable[[], bool]) -> bool:
        """Wait for a turn.  False (and no turn) when the call ended first."""
        with self._lock:
            if self._free:
                self._free -= 1
                return True
            gate = threading.Lock()
            gate.acquire()
            self.waiting.append(gate)
        while not gate.acquire(timeout=self.POLL):
            if is_active():
                continue
            with self._lock:
                try:
                    self.waiting.remove(gate)
                    return False
                except ValueError:
                    pass  # handed to us in the meantime: pass it straight on
            gate.acquire()
            self.give()
            return False
        return True

    def give(self) -> None:
        """End a turn: hand it to the batch that has waited longest, if any."""
        with self._lock:
            if self.waiting:
                # the turn stays held: it passes to that batch without a gap
                self.waiting.popleft().release()
            else:
                self._free += 1


class CryptoServicer(crypto_pb2_grpc.CryptoServiceServicer):
    def __init__(self, keyring: Keyring, *, max_batch: int = MAX_BATCH_OPERATIONS) -> None:
        self._ring = keyring
        self._max_batch = max_batch
        self._turns = BatchTurns()
        self._ops: dict[str, Callable[[Any, Any], Any]] = {
            "sign": self._sign,
            "verify": self._verify,
            "encrypt": self._encrypt,
            "decrypt": self._decrypt,
            "mac": self._mac,
            "verify_mac": self._verify_mac,
        }

    # The unary forms and the per-operation functions are the same code.  Each
    # fills the response message it is given: a new one for a unary call, the
    # operation's own field of its OperationResult in a batch or stream (so a
    # result is not built and then copied).

    def _sign(self, r: Any, out: Any) -> Any:
        out.key_version, out.signature = self._ring.sign(r.key, r.message)
        return out

    def _verify(self, r: Any, out: Any) -> Any:
        out.valid = self._ring.verify(r.key, r.message, r.signature)
        out.key_version = _token_version(r.signature)
        return out

    def _encrypt(self, r: Any, out: Any) -> Any:
        out.key_version, out.ciphertext = self._ring.encrypt(r.key, r.plaintext,
                                                             r.associated_data)
        return out

    def _decrypt(self, r: Any, out: Any) -> Any:
        out.key_version, out.plaintext = self._ring.decrypt(r.key, r.ciphertext,
                                                            r.associated_data)
        return out

    def _mac(self, r: Any, out: Any) -> Any:
        out.key_version, out.mac = self._ring.mac(r.key, r.message)
        return out

    def _verify_mac(self, r: Any, out: Any) -> Any:
        out.valid = self._ring.verify_mac(r.key, r.message, r.mac)
        out.key_version = _token_version(r.mac)
        return out

    def Sign(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._sign(request, crypto_pb2.SignResponse())

    def Verify(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._verify(request, crypto_pb2.VerifyResponse())

    def Encrypt(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._encrypt(request, crypto_pb2.EncryptResponse())

    def Decrypt(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._decrypt(request, crypto_pb2.DecryptResponse())

    def Mac(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._mac(request, crypto_pb2.MacResponse())

    def VerifyMac(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._verify_mac(request, crypto_pb2.VerifyMacResponse())

    def run(self, op: Any) -> crypto_pb2.OperationResult:
        """One operation of a batch or stream; its failure is its own result."""
        result = crypto_pb2.OperationResult()
        self._run_into(op, result)
        return result

    def _run_into(self, op: Any, result: Any) -> None:
        kind = op.WhichOneof("op")
        result.id = op.id
        try:
            if kind is None:
                raise InvalidArgument(
                    f"operation {op.id} has no operation set (sign, verify, encrypt, "
                    "decrypt, mac or verify_mac)")
            out = getattr(result, kind)
            # present in the oneof even if every field ends up at its default
            out.SetInParent()
            self._ops[kind](getattr(op, kind), out)
        except Exception as e:
            code, name, message = errors.describe(e, f"batch operation {kind}")
            # setting the error clears whatever of the oneof was set
            result.error.CopyFrom(crypto_pb2.OperationError(
                code=errors.code_number(code), error=name, message=message))

    def Batch(self, request: Any, context: grpc.ServicerContext) -> Any:
        operations = request.operations
        n = len(operations)
        if n > self._max_batch:
            raise RequestTooLarge(
                f"a batch carries at most {self._max_batch} operations; got {n}: split it")
        # each result is made in place in the response (not made, then copied in)
        response = crypto_pb2.BatchResponse()
        add = response.results.add
        run_into = self._run_into
        is_active = context.is_active
        turns = self._turns
        waiting = turns.waiting
        turn = BATCH_TURN_OPERATIONS - 1
        # a waiting batch blocks in take() without the GIL (see BatchTurns)
        if not turns.take(is_active):
            return response
        held = True
        try:
            for i, op in enumerate(operations):
                if not i & 7:
                    # past the deadline (or cancelled) the answer would be
                    # thrown away: asked every 8 operations (well under a ms)
                    if not is_active():
                        break
                    if not i & turn and waiting and i:
                        held = False
                        turns.give()
                        if not turns.take(is_active):
                            break
                        held = True
                run_into(op, add())
        finally:
            if held:
                turns.give()
        return response

    def Stream(self, request_iterator: Iterable[Any], context: grpc.ServicerContext) -> Any:
        for op in request_iterator:
            yield self.run(op)


# --- StatsService ---------------------------------------------------------------

#: how often a waiting watch looks whether its call is still alive (seconds)
WATCH_POLL = 0.5


def watch_interval(seconds: float) -> float:
    """A WatchStats interval as served: 0 means 1 s; kept within 0.1 s to 1 h."""
    if math.isnan(seconds) or seconds < 0:
        raise InvalidArgument(f"interval_seconds must be positive; got {seconds}")
    return min(max(seconds or 1.0, 0.1), 3600.0)



class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    def __init__(self, source: StatsSource, stopping: threading.Event) -> None:
        self._source = source
        self._stopping = stopping

    def GetStats(self, request: Any, context: grpc.ServicerContext) -> Any:
        return to_proto(self._source.snapshot())

    def WatchStats(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        interval = watch_interval(request.interval_seconds)
        clock = time.monotonic
        while context.is_active():
            yield to_proto(self._source.snapshot())
            # a drain ends the watch at once instead of holding shutdown up;
            # a cancelled watch (the client left, or the edge found it stuck)
            # frees its thread within WATCH_POLL, not after a whole interval
            due = clock() + interval
            while (left := due - clock()) > 0:
                if self._stopping.wait(min(left, WATCH_POLL)):
                    return
                if not context.is_active():
                    return


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

_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
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
            factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
            handlers[method.name] = factory(
                getattr(servicer, method.name),
                request_deserializer=_safe_parser(request_cls),
                response_serializer=response_cls.SerializeToString,
            )
        out.append(grpc.method_handlers_generic_handler(service.full_name, handlers))
    return out
