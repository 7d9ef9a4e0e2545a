"""The asyncio client: :class:`AsyncVaultClient`.

::

    from secretvault.clients import AsyncVaultClient

    async with AsyncVaultClient() as vault:  # $SECRETVAULT_SOCKET or the default
        await vault.create_key("ci/release", "ed25519")
        token = await vault.sign("ci/release", b"artifact digest")
        public = await vault.public_key("ci/release")
        assert public.verify(b"artifact digest", token)

Every failure is a :class:`secretvault.api.errors.VaultError` subclass with the same
name the server raised (``KeyNotFound``, ``PermissionDenied``...).

``clients/aio.py`` is the source of both clients: ``scripts/gen-sync-client``
writes ``clients/client.py`` from it, and CI checks that the written file is
current.  What truly differs between the two (the channel, waiting for it to
connect, sleeping between retries) is in ``clients/_transport.py``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2, stats_pb2
from secretvault.api.errors import ShuttingDown
from secretvault.clients import _errors, _stubs, _wire, local
from secretvault.clients._options import DEFAULT_TIMEOUT, RetryPolicy, TlsConfig
from secretvault.clients._transport import AsyncTransport

if TYPE_CHECKING:  # the records load with the first call that returns or takes one
    from secretvault.clients._ops import Operation, Result
    from secretvault.clients._stats import Stats
    from secretvault.clients._types import Key, PublicKey

T = TypeVar("T")
Req = TypeVar("Req")


class AsyncVaultClient:
    """A connection to one vault, over a Unix socket or TLS.

    ``target``: ``None`` for ``$SECRETVAULT_SOCKET`` (else the server's
    default socket), a socket path, or ``host:port`` with ``tls``.  A socket
    path that another user could redirect (a directory on it that they own
    or may write, sticky ones aside) is refused with ``UnsafeSocketPath``
    before anything is sent; ``$SECRETVAULT_TRUST_SOCKET_DIRS`` names
    directories to accept as they are.
    ``timeout`` bounds each attempt of each call, in seconds.
    Create it inside the event loop that uses it.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | None = None,
        *,
        tls: TlsConfig | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = _wire.parse_target(target)
        _wire.check_target(self.target, tls)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = tuple(metadata)
        self._transport = AsyncTransport(
            self.target, tls, options=options, interceptors=interceptors
        )
        self._keys = self._transport.keys
        self._crypto = self._transport.crypto
        self._stats = self._transport.stats
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._transport.close()

    async def __aenter__(self) -> AsyncVaultClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncVaultClient({str(self.target)!r})"

    # --- the one call path: retries and error mapping --------------------------------

    async def _ready(self, wait: float) -> bool:
        """Whether the channel connects within ``wait`` seconds."""
        return await self._transport.ready(wait, self._metadata)

    async def _call(
        self, rpc: _stubs.AsyncUnaryUnary[Req, T], request: Req, *, idempotent: bool
    ) -> T:
        """Send ``request``, retrying on UNAVAILABLE as :class:`RetryPolicy` says.

        A key-changing (non-idempotent) call is sent only once the channel is
        READY, so an attempt that finds no server has provably sent nothing
        and can be repeated.  Once sent, it is repeated only if the server
        said it refused it unprocessed (``ShuttingDown``).
        """
        policy = self.retry
        attempt = 0
        while True:
            attempt += 1
            if not idempotent and not await self._ready(
                max(policy.connect_wait, policy.backoff(attempt))
            ):
                if attempt >= policy.max_attempts:
                    raise _errors.from_status(
                        "UNAVAILABLE", None, "the channel did not connect", target=str(self.target)
                    )
                continue
            try:
                return await rpc(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                err = _errors.from_rpc_error(e, target=str(self.target))
            if err.status != "UNAVAILABLE":
                raise err
            if not idempotent and not isinstance(err, ShuttingDown):
                raise _errors.outcome_unknown(err)
            if attempt >= policy.max_attempts:
                raise err
            await self._transport.sleep(policy.backoff(attempt))

    @contextmanager
    def _streaming(self, call: _stubs.AsyncStreaming[Any]) -> Iterator[None]:
        """Around reading a server stream: its errors mapped, the call
        cancelled when the reader stops early.  Streams are not retried."""
        try:
            yield
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e, target=str(self.target)) from None
        finally:
            call.cancel()

    # --- keys ------------------------------------------------------------------------

    async def create_key(
        self, name: str, type: str, labels: Mapping[str, str] | None = None
    ) -> Key:
        """A new key, generated inside the vault, version 1."""
        req = keys_pb2.CreateKeyRequest(
            name=name, type=_wire.key_type_to_wire(type), labels=dict(labels or {})
        )
        return _wire.key_from_wire(await self._call(self._keys.CreateKey, req, idempotent=False))

    async def import_key_public(self) -> bytes:
        """The vault's X25519 import public key (what key material is sealed to)."""
        resp = await self._call(
            self._keys.GetImportKey, keys_pb2.GetImportKeyRequest(), idempotent=True
        )
        return bytes(resp.public_key)

    async def import_key(
        self,
        name: str,
        type: str,
        material: bytes | bytearray,
        labels: Mapping[str, str] | None = None,
    ) -> Key:
        """Import key material, sealed here to the vault's import key first.

        ``material``: the raw key (see :func:`secretvault.clients.local.parse_key_material`).
        It crosses the wire only inside the sealed box.
        """
        local.check_material(type, len(material))
        wrapped = local.seal_for_import(await self.import_key_public(), type, material)
        return await self.import_wrapped(name, type, wrapped, labels)

    async def import_wrapped(
        self, name: str, type: str, wrapped: bytes, labels: Mapping[str, str] | None = None
    ) -> Key:
        """Import material already sealed with ``crypto_box_seal`` to the import key."""
        req = keys_pb2.ImportKeyRequest(
            name=name,
            type=_wire.key_type_to_wire(type),
            wrapped_key=wrapped,
            labels=dict(labels or {}),
        )
        return _wire.key_from_wire(await self._call(self._keys.ImportKey, req, idempotent=False))

    async def get_key(self, name: str) -> Key:
        req = keys_pb2.GetKeyRequest(name=name)
        return _wire.key_from_wire(await self._call(self._keys.GetKey, req, idempotent=True))

    async def iter_keys(self, prefix: str = "", *, page_size: int = 0) -> AsyncGenerator[Key]:
        """Every key whose name starts with ``prefix``, page by page."""
        token = ""
        while True:
            req = keys_pb2.ListKeysRequest(prefix=prefix, page_size=page_size, page_token=token)
            resp = await self._call(self._keys.ListKeys, req, idempotent=True)
            for k in resp.keys:
                yield _wire.key_from_wire(k)
            token = resp.next_page_token
            if not token:
                return

    async def list_keys(self, prefix: str = "") -> list[Key]:
        return [k async for k in self.iter_keys(prefix)]

    async def rotate_key(self, name: str) -> Key:
        """A new primary version; older versions stay for decrypt and verify."""
        req = keys_pb2.RotateKeyRequest(name=name)
        return _wire.key_from_wire(await self._call(self._keys.RotateKey, req, idempotent=False))

    async def set_min_decryption_version(self, name: str, version: int) -> Key:
        req = keys_pb2.SetMinDecryptionVersionRequest(name=name, version=version)
        return _wire.key_from_wire(
            await self._call(self._keys.SetMinDecryptionVersion, req, idempotent=False)
        )

    async def delete_key_version(self, name: str, version: int) -> Key:
        req = keys_pb2.DeleteKeyVersionRequest(name=name, version=version)
        return _wire.key_from_wire(
            await self._call(self._keys.DeleteKeyVersion, req, idempotent=False)
        )

    async def delete_key(self, name: str) -> None:
        """Zero every version's memory and remove every sealed record."""
        req = keys_pb2.DeleteKeyRequest(name=name)
        await self._call(self._keys.DeleteKey, req, idempotent=False)

    async def public_key(self, name: str, *, version: int = 0, format: str = "raw") -> PublicKey:
        """An Ed25519 or X25519 public key (``version`` 0: the primary)."""
        req = _wire.public_key_request(name, version, format)
        resp = await self._call(self._keys.GetPublicKey, req, idempotent=True)
        return _wire.public_key_from_wire(name, format, resp, comment=name)

    # --- crypto ----------------------------------------------------------------------

    async def sign(self, key: str, message: bytes) -> bytes:
        """An Ed25519 signature token (7-byte header + 64-byte signature)."""
        req = crypto_pb2.SignRequest(key=key, message=message)
        resp = await self._call(self._crypto.Sign, req, idempotent=True)
        return bytes(resp.signature)

    async def verify(self, key: str, message: bytes, signature: bytes) -> bool:
        req = crypto_pb2.VerifyRequest(key=key, message=message, signature=signature)
        resp = await self._call(self._crypto.Verify, req, idempotent=True)
        return bool(resp.valid)

    async def encrypt(self, key: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """An XChaCha20-Poly1305 token (the vault picks the nonce)."""
        req = crypto_pb2.EncryptRequest(
            key=key, plaintext=plaintext, associated_data=associated_data
        )
        # not idempotent in output (a fresh nonce) but safe to repeat: no state changes
        resp = await self._call(self._crypto.Encrypt, req, idempotent=True)
        return bytes(resp.ciphertext)

    async def decrypt(self, key: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """Open an XChaCha20-Poly1305 token or an X25519 sealed-box token."""
        req = crypto_pb2.DecryptRequest(
            key=key, ciphertext=ciphertext, associated_data=associated_data
        )
        resp = await self._call(self._crypto.Decrypt, req, idempotent=True)
        return bytes(resp.plaintext)

    async def mac(self, key: str, message: bytes) -> bytes:
        """An HMAC-SHA-256 token (7-byte header + 32-byte MAC)."""
        req = crypto_pb2.MacRequest(key=key, message=message)
        resp = await self._call(self._crypto.Mac, req, idempotent=True)
        return bytes(resp.mac)

    async def verify_mac(self, key: str, message: bytes, mac: bytes) -> bool:
        req = crypto_pb2.VerifyMacRequest(key=key, message=message, mac=mac)
        resp = await self._call(self._crypto.VerifyMac, req, idempotent=True)
        return bool(resp.valid)

    # --- batches ---------------------------------------------------------------------

    async def batch(self, operations: Iterable[Operation]) -> list[Result]:
        """Run many operations in as few messages as the limits allow.

        Results come in order; each is the value or that operation's own
        :class:`VaultError` (the others still run).  Split into BatchRequests
        of at most 10,000 operations; each request is retried on
        UNAVAILABLE (every batch operation is safe to repeat).
        """
        from secretvault.clients._ops import batch_requests

        results: list[Result] = []
        for req in batch_requests(operations):
            resp = await self._call(self._crypto.Batch, req, idempotent=True)
            results.extend(_wire.result_from_wire(r) for r in resp.results)
        return results

    async def stream(self, operations: Iterable[Operation]) -> AsyncGenerator[Result]:
        """The same over one bidirectional stream, results in order as they come.

        Not retried: a stream that fails part-way raises the mapped error.
        """
        from secretvault.clients._ops import operation_to_wire

        requests = (operation_to_wire(i, op) for i, op in enumerate(operations))
        call = self._crypto.Stream(requests, metadata=self._metadata)
        with self._streaming(call):
            async for msg in call:
                yield _wire.result_from_wire(msg)

    async def sign_many(self, key: str, messages: Iterable[bytes]) -> list[bytes]:
        """Signature tokens for each message; raises the first failure."""
        from secretvault.clients._ops import Sign

        return _wire.unwrap(await self.batch(Sign(key, m) for m in messages))

    async def verify_many(self, key: str, pairs: Iterable[tuple[bytes, bytes]]) -> list[bool]:
        """Verdicts for (message, signature) pairs; raises the first failure."""
        from secretvault.clients._ops import Verify

        return _wire.unwrap(await self.batch(Verify(key, m, s) for m, s in pairs))

    async def encrypt_many(
        self, key: str, plaintexts: Iterable[bytes], associated_data: bytes = b""
    ) -> list[bytes]:
        from secretvault.clients._ops import Encrypt

        return _wire.unwrap(await self.batch(Encrypt(key, p, associated_data) for p in plaintexts))

    async def decrypt_many(
        self, key: str, ciphertexts: Iterable[bytes], associated_data: bytes = b""
    ) -> list[bytes]:
        from secretvault.clients._ops import Decrypt

        return _wire.unwrap(
            await self.batch(Decrypt(key, c, associated_data) for c in ciphertexts)
        )

    async def mac_many(self, key: str, messages: Iterable[bytes]) -> list[bytes]:
        from secretvault.clients._ops import Mac

        return _wire.unwrap(await self.batch(Mac(key, m) for m in messages))

    async def verify_mac_many(self, key: str, pairs: Iterable[tuple[bytes, bytes]]) -> list[bool]:
        from secretvault.clients._ops import VerifyMac

        return _wire.unwrap(await self.batch(VerifyMac(key, m, t) for m, t in pairs))

    # --- stats -----------------------------------------------------------------------

    async def stats(self) -> Stats:
        """What secret memory costs right now."""
        from secretvault.clients._stats import stats_from_wire

        req = stats_pb2.GetStatsRequest()
        return stats_from_wire(await self._call(self._stats.GetStats, req, idempotent=True))

    async def watch_stats(self, interval: float = 1.0) -> AsyncGenerator[Stats]:
        """A :class:`Stats` every ``interval`` seconds until the iterator is closed."""
        from secretvault.clients._stats import stats_from_wire

        req = stats_pb2.WatchStatsRequest(interval_seconds=interval)
        call = self._stats.WatchStats(req, metadata=self._metadata)
        with self._streaming(call):
            async for msg in call:
                yield stats_from_wire(msg)
