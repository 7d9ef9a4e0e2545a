"""The gRPC servicers: decode the request, call the keyring, encode the reply.

Nothing here checks policy or limits, writes audit lines or maps errors to
status codes: the edge interceptor (``secretvault.vault.edge``) does all of
that, once, for every method, before a servicer sees the request (a batch
reaches ``Batch`` only within its size limit).  What the policy decides about
a call's data is handed over explicitly: ``ListKeys`` takes the caller's
visibility as an argument.  A servicer raises
:class:`~secretvault.api.errors.VaultError` for anything wrong with the
request.  Each method is typed with the generated messages it takes and
returns (``secretvault.api._proto``).

Batch and stream forms run each operation through the same functions as the
unary calls; a failed operation becomes an ``OperationError`` carrying the
status its unary call would have returned, and the others still run.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc

from secretvault.api import framing
from secretvault.api._proto.secretvault.v1 import (
    crypto_pb2,
    crypto_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)
from secretvault.api.errors import InvalidArgument, VaultError
from secretvault.vault import errors
from secretvault.vault.batch_turns import BATCH_TURN_OPERATIONS, CHECK_EVERY, BatchTurns
from secretvault.vault.crypto import KeyType
from secretvault.vault.keyring import Keyring
from secretvault.vault.keys import KeyInfo
from secretvault.vault.stats import StatsSource, to_proto

#: ListKeys page size: default and maximum (documented in keys.proto)
MAX_PAGE_SIZE = 1000

#: which key names the caller of ListKeys may see (None: every name)
Visible = Callable[[str], bool] | None


def _nothing(name: str) -> bool:
    return False


KEY_TYPES: dict[keys_pb2.KeyType, KeyType] = {
    keys_pb2.KEY_TYPE_ED25519: KeyType.ED25519,
    keys_pb2.KEY_TYPE_X25519: KeyType.X25519,
    keys_pb2.KEY_TYPE_XCHACHA20_POLY1305: KeyType.XCHACHA20_POLY1305,
    keys_pb2.KEY_TYPE_HMAC_SHA256: KeyType.HMAC_SHA256,
}
KEY_TYPE_NUMBERS: dict[KeyType, keys_pb2.KeyType] = {v: k for k, v in KEY_TYPES.items()}

FORMATS: dict[keys_pb2.PublicKeyFormat, str] = {
    keys_pb2.PUBLIC_KEY_FORMAT_UNSPECIFIED: "raw",
    keys_pb2.PUBLIC_KEY_FORMAT_RAW: "raw",
    keys_pb2.PUBLIC_KEY_FORMAT_PEM: "pem",
    keys_pb2.PUBLIC_KEY_FORMAT_OPENSSH: "openssh",
    keys_pb2.PUBLIC_KEY_FORMAT_JWK: "jwk",
}


def _key_type(number: keys_pb2.KeyType) -> KeyType:
    if number == keys_pb2.KEY_TYPE_UNSPECIFIED:
        raise InvalidArgument("the key type is required (ed25519, x25519, "
                              "xchacha20-poly1305 or hmac-sha256)")
    kt = KEY_TYPES.get(number)
    if kt is None:
        raise InvalidArgument(f"unknown key type number {number}")
    return kt


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

    # CreateKey, ImportKey and RotateKey are told by the edge which identity
    # makes the new version (``by``), for its secret-memory quota

    def CreateKey(self, request: keys_pb2.CreateKeyRequest,
                  context: grpc.ServicerContext, by: str | None = None) -> keys_pb2.Key:
        info = self._ring.create(request.name, _key_type(request.type), dict(request.labels),
                                 by=by)
        return key_to_proto(info)

    def GetImportKey(self, request: keys_pb2.GetImportKeyRequest,
                     context: grpc.ServicerContext) -> keys_pb2.GetImportKeyResponse:
        return keys_pb2.GetImportKeyResponse(public_key=self._ring.import_public_key)

    def ImportKey(self, request: keys_pb2.ImportKeyRequest,
                  context: grpc.ServicerContext, by: str | None = None) -> keys_pb2.Key:
        info = self._ring.import_wrapped(
            request.name, _key_type(request.type), request.wrapped_key, dict(request.labels),
            by=by)
        return key_to_proto(info)

    def GetKey(self, request: keys_pb2.GetKeyRequest,
               context: grpc.ServicerContext) -> keys_pb2.Key:
        return key_to_proto(self._ring.get(request.name))

    def GetPublicKey(self, request: keys_pb2.GetPublicKeyRequest,
                     context: grpc.ServicerContext) -> keys_pb2.GetPublicKeyResponse:
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

    def ListKeys(self, request: keys_pb2.ListKeysRequest, context: grpc.ServicerContext,
                 visible: Visible = _nothing) -> keys_pb2.ListKeysResponse:
        """One page of the names ``visible`` lets the caller see.

        The edge passes ``visible`` from the policy (``Policy.lister``: None
        for an identity that may list every name).  Left out, nothing is
        visible: a listing that did not pass the edge shows no names rather
        than all of them.
        """
        size = min(request.page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _after(request.page_token) if request.page_token else None
        # the caller's visibility filters the names before the page is cut: the
        # page is full, and the token (the page's last name) is one it may see
        page, more = self._ring.page(limit=size, prefix=request.prefix, after=after,
                                     visible=visible)
        token = _page_token(page[-1].name) if more else ""
        return keys_pb2.ListKeysResponse(keys=[key_to_proto(k) for k in page],
                                         next_page_token=token)

    def RotateKey(self, request: keys_pb2.RotateKeyRequest,
                  context: grpc.ServicerContext, by: str | None = None) -> keys_pb2.Key:
        return key_to_proto(self._ring.rotate(request.name, by=by))

    def SetMinDecryptionVersion(self, request: keys_pb2.SetMinDecryptionVersionRequest,
                                context: grpc.ServicerContext) -> keys_pb2.Key:
        return key_to_proto(self._ring.set_min_decryption_version(request.name, request.version))

    def DeleteKeyVersion(self, request: keys_pb2.DeleteKeyVersionRequest,
                         context: grpc.ServicerContext) -> keys_pb2.Key:
        if request.version == 0:
            raise InvalidArgument("give the version to delete (versions start at 1)")
        return key_to_proto(self._ring.delete_version(request.name, request.version))

    def DeleteKey(self, request: keys_pb2.DeleteKeyRequest,
                  context: grpc.ServicerContext) -> keys_pb2.DeleteKeyResponse:
        self._ring.delete(request.name)
        return keys_pb2.DeleteKeyResponse()


# --- CryptoService --------------------------------------------------------------


#: one operation of a batch or stream: fill the result's field of the
#: operation's kind from the request in the operation's field of that kind
_Fill = Callable[..., object]


class CryptoServicer(crypto_pb2_grpc.CryptoServiceServicer):
    def __init__(self, keyring: Keyring) -> None:
        self._ring = keyring
        self._turns = BatchTurns()
        # the Operation oneof's field names are the OperationResult's too
        self._fills: dict[str | None, _Fill] = {
            "sign": self._sign, "verify": self._verify, "encrypt": self._encrypt,
            "decrypt": self._decrypt, "mac": self._mac, "verify_mac": self._verify_mac,
        }

    # The unary forms and the per-operation functions are the same code.  Each
    # fills the response message it is given: a new one for a unary call, the
    # operation's own field of its OperationResult in a batch or stream (so a
    # result is not built and then copied).

    def _sign(self, r: crypto_pb2.SignRequest,
              out: crypto_pb2.SignResponse) -> crypto_pb2.SignResponse:
        out.key_version, out.signature = self._ring.sign(r.key, r.message)
        return out

    def _verify(self, r: crypto_pb2.VerifyRequest,
                out: crypto_pb2.VerifyResponse) -> crypto_pb2.VerifyResponse:
        out.valid = self._ring.verify(r.key, r.message, r.signature)
        out.key_version = _token_version(r.signature)
        return out

    def _encrypt(self, r: crypto_pb2.EncryptRequest,
                 out: crypto_pb2.EncryptResponse) -> crypto_pb2.EncryptResponse:
        out.key_version, out.ciphertext = self._ring.encrypt(r.key, r.plaintext,
                                                             r.associated_data)
        return out

    def _decrypt(self, r: crypto_pb2.DecryptRequest,
                 out: crypto_pb2.DecryptResponse) -> crypto_pb2.DecryptResponse:
        out.key_version, out.plaintext = self._ring.decrypt(r.key, r.ciphertext,
                                                            r.associated_data)
        return out

    def _mac(self, r: crypto_pb2.MacRequest,
             out: crypto_pb2.MacResponse) -> crypto_pb2.MacResponse:
        out.key_version, out.mac = self._ring.mac(r.key, r.message)
        return out

    def _verify_mac(self, r: crypto_pb2.VerifyMacRequest,
                    out: crypto_pb2.VerifyMacResponse) -> crypto_pb2.VerifyMacResponse:
        out.valid = self._ring.verify_mac(r.key, r.message, r.mac)
        out.key_version = _token_version(r.mac)
        return out

    def Sign(self, request: crypto_pb2.SignRequest,
             context: grpc.ServicerContext) -> crypto_pb2.SignResponse:
        return self._sign(request, crypto_pb2.SignResponse())

    def Verify(self, request: crypto_pb2.VerifyRequest,
               context: grpc.ServicerContext) -> crypto_pb2.VerifyResponse:
        return self._verify(request, crypto_pb2.VerifyResponse())

    def Encrypt(self, request: crypto_pb2.EncryptRequest,
                context: grpc.ServicerContext) -> crypto_pb2.EncryptResponse:
        return self._encrypt(request, crypto_pb2.EncryptResponse())

    def Decrypt(self, request: crypto_pb2.DecryptRequest,
                context: grpc.ServicerContext) -> crypto_pb2.DecryptResponse:
        return self._decrypt(request, crypto_pb2.DecryptResponse())

    def Mac(self, request: crypto_pb2.MacRequest,
            context: grpc.ServicerContext) -> crypto_pb2.MacResponse:
        return self._mac(request, crypto_pb2.MacResponse())

    def VerifyMac(self, request: crypto_pb2.VerifyMacRequest,
                  context: grpc.ServicerContext) -> crypto_pb2.VerifyMacResponse:
        return self._verify_mac(request, crypto_pb2.VerifyMacResponse())

    def run(self, op: crypto_pb2.Operation) -> crypto_pb2.OperationResult:
        """One operation of a batch or stream; its failure is its own result."""
        result = crypto_pb2.OperationResult()
        self._run_into(op, result)
        return result

    def _run_into(self, op: crypto_pb2.Operation, result: crypto_pb2.OperationResult) -> None:
        kind = op.WhichOneof("op")
        result.id = op.id
        try:
            fill = self._fills.get(kind)
            if fill is None:
                raise InvalidArgument(
                    f"operation {op.id} has no operation set (sign, verify, encrypt, "
                    "decrypt, mac or verify_mac)")
            # filling the result's field of the kind makes it the oneof's choice:
            # every kind sets key_version, which is never 0 (versions start at 1)
            fill(getattr(op, kind), getattr(result, kind))
        except Exception as e:
            _error_into(result, kind, e)

    def Batch(self, request: crypto_pb2.BatchRequest,
              context: grpc.ServicerContext) -> crypto_pb2.BatchResponse:
        # the edge refused it if it is over the size limit
        # (secretvault.vault.edge.limits): every operation runs
        operations = request.operations
        n = len(operations)
        # each result is made in place in the response (not made, then copied in)
        response = crypto_pb2.BatchResponse()
        add = response.results.add
        is_active = context.is_active
        turns = self._turns
        waiting = turns.waiting
        turn = BATCH_TURN_OPERATIONS - 1
        # a waiting batch blocks in take() without the GIL (see BatchTurns)
        if not turns.take(is_active):
            return response
        held = True
        try:
            for start in range(0, n, CHECK_EVERY):
                # past the deadline (or cancelled) the answer would be thrown
                # away: asked every CHECK_EVERY operations (well under a ms)
                if not is_active():
                    break
                if start and not start & turn and waiting:
                    held = False
                    turns.give()
                    if not turns.take(is_active):
                        break
                    held = True
                self._run_span(operations, start, min(n, start + CHECK_EVERY), add)
        finally:
            if held:
                turns.give()
        return response

    def _run_span(self, operations: Sequence[crypto_pb2.Operation], i: int, end: int,
                  add: Callable[[], crypto_pb2.OperationResult]) -> None:
        """Operations ``i`` to ``end`` of a batch, each result added in order.

        Consecutive signs with one key (a batch's usual shape) are one
        :meth:`Keyring.sign_each`: one look-up and one hold of the read lock for
        the run, libsodium called in one loop.  When the run is refused as a
        whole (no such key, another type...), each of its operations runs on its
        own, so each gets the result its unary call would have; an unexpected
        error (a bug) is each operation's INTERNAL result.
        """
        run_into, sign_each = self._run_into, self._ring.sign_each
        while i < end:
            op = operations[i]
            if op.WhichOneof("op") != "sign":
                run_into(op, add())
                i += 1
                continue
            key = op.sign.key
            ids: list[int] = [op.id]
            messages: list[bytes] = [op.sign.message]
            j = i + 1
            while j < end:
                other = operations[j]
                if other.WhichOneof("op") != "sign" or other.sign.key != key:
                    break
                ids.append(other.id)
                messages.append(other.sign.message)
                j += 1
            try:
                version, tokens = sign_each(key, messages)
            except VaultError:  # refused (no such key, another type...): each says why
                for k in range(i, j):
                    run_into(operations[k], add())
            except Exception as e:  # a bug: each operation of the run fails with it
                for op_id in ids:
                    result = add()
                    result.id = op_id
                    _error_into(result, "sign", e)
            else:
                for op_id, token in zip(ids, tokens, strict=True):
                    result = add()
                    result.id = op_id
                    out = result.sign
                    out.key_version = version
                    out.signature = token
            i = j

    def Stream(self, request_iterator: Iterable[crypto_pb2.Operation],
               context: grpc.ServicerContext) -> Iterator[crypto_pb2.OperationResult]:
        for op in request_iterator:
            yield self.run(op)


def _error_into(result: crypto_pb2.OperationResult, kind: str | None, e: Exception) -> None:
    """The error ``e`` as the result of one operation (its status, as the unary call's)."""
    code, name, message = errors.describe(e, f"batch operation {kind}")
    # setting the error clears whatever of the oneof was set
    result.error.CopyFrom(crypto_pb2.OperationError(
        code=errors.code_number(code), error=name, message=message))


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

    def GetStats(self, request: stats_pb2.GetStatsRequest,
                 context: grpc.ServicerContext) -> stats_pb2.Stats:
        return to_proto(self._source.snapshot())

    def WatchStats(self, request: stats_pb2.WatchStatsRequest,
                   context: grpc.ServicerContext) -> Iterator[stats_pb2.Stats]:
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
