"""The asyncio client: :class:`AsyncVaultClient`, the same API as
:class:`clients.VaultClient` with ``await``.

::

    from secretvault.clients import AsyncVaultClient

    async with AsyncVaultClient() as vault:
        token = await vault.sign("ci/release", b"artifact digest")
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2, stats_pb2
from secretvault.api.errors import ShuttingDown
from secretvault.clients import _errors, _stubs, _wire, local
from secretvault.clients._types import (
    Decrypt,
    Encrypt,
    Key,
    Mac,
    Operation,
    PublicKey,
    Result,
    RetryPolicy,
    Sign,
    TlsConfig,
    Verify,
    VerifyMac,
)
from secretvault.clients.client import DEFAULT_TIMEOUT

T = TypeVar("T")
Req = TypeVar("Req")


class AsyncVaultClient:
    """A connection to one vault for asyncio code (see :class:`clients.VaultClient`).

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
        opts = _wire.channel_options(tls, options)
        icpt = list(interceptors) or None
        if tls is None:
            self._channel = grpc.aio.insecure_channel(
                self.target.grpc_target, options=opts, interceptors=icpt
            )
        else:
            self._channel = grpc.aio.secure_channel(
                self.target.grpc_target,
                _wire.make_credentials(tls),
                options=opts,
                interceptors=icpt,
            )
        self._keys, self._crypto, self._stats = _stubs.aio_stubs(self._channel)
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._channel.close()

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

    # --- the one call path (see VaultClient._call) --------------------------------------

    async def _ready(self, wait: float) -> bool:
        try:
            await asyncio.wait_for(self._channel.channel_ready(), wait)
        except TimeoutError:
            return False
        return True

    async def _call(
        self, rpc: _stubs.AioUnaryUnary[Req, T], request: Req, *, idempotent: bool
    ) -> T:
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
            await asyncio.sleep(policy.backoff(attempt))

    async def _stream(self, call: _stubs.AioStreaming[T]) -> AsyncIterator[T]:
        try:
            async for msg in call:
                yield msg
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e, target=str(self.target)) from None
        finally:
            call.cancel()

    # --- keys -------------------------------------------------------------------------

    async def create_key(
        self, name: str, type: str, labels: Mapping[str, str] | None = None
    ) -> Key:
        req = keys_pb2.CreateKeyRequest(
            name=name, type=_wire.key_type_to_wire(type), labels=dict(labels or {})
        )
        return _wire.key_from_wire(await self._call(self._keys.CreateKey, req, idempotent=False))

    async def import_key_public(self) -> bytes:
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
        local.check_material(type, len(material))
        wrapped = local.seal_for_import(await self.import_key_public(), type, material)
        return await self.import_wrapped(name, type, wrapped, labels)

    async def import_wrapped(
        self, name: str, type: str, wrapped: bytes, labels: Mapping[str, str] | None = None
    ) -> Key:
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

    async def iter_keys(self, prefix: str = "", *, page_size: int = 0) -> AsyncIterator[Key]:
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
        await self._call(
            self._keys.DeleteKey, keys_pb2.DeleteKeyRequest(name=name), idempotent=False
        )

    async def public_key(self, name: str, *, version: int = 0, format: str = "raw") -> PublicKey:
        req = _wire.public_key_request(name, version, format)
        resp = await self._call(self._keys.GetPublicKey, req, idempotent=True)
        return _wire.public_key_from_wire(name, format, resp, comment=name)

    # --- crypto -------------------------------------------------------------------------

    async def sign(self, key: str, message: bytes) -> bytes:
        req = crypto_pb2.SignRequest(key=key, message=message)
        return bytes((await self._call(self._crypto.Sign, req, idempotent=True)).signature)

    async def verify(self, key: str, message: bytes, signature: bytes) -> bool:
        req = crypto_pb2.VerifyRequest(key=key, message=message, signature=signature)
        return bool((await self._call(self._crypto.Verify, req, idempotent=True)).valid)

    async def encrypt(self, key: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        req = crypto_pb2.EncryptRequest(
            key=key, plaintext=plaintext, associated_data=associated_data
        )
        return bytes((await self._call(self._crypto.Encrypt, req, idempotent=True)).ciphertext)

    async def decrypt(self, key: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        req = crypto_pb2.DecryptRequest(
            key=key, ciphertext=ciphertext, associated_data=associated_data
        )
        return bytes((await self._call(self._crypto.Decrypt, req, idempotent=True)).plaintext)

    async def mac(self, key: str, message: bytes) -> bytes:
        req = crypto_pb2.MacRequest(key=key, message=message)
        return bytes((await self._call(self._crypto.Mac, req, idempotent=True)).mac)

    async def verify_mac(self, key: str, message: bytes, mac: bytes) -> bool:
        req = crypto_pb2.VerifyMacRequest(key=key, message=message, mac=mac)
        return bool((await self._call(self._crypto.VerifyMac, req, idempotent=True)).valid)

    # --- batches -------------------------------------------------------------------------

    async def batch(self, operations: Iterable[Operation]) -> list[Result]:
        """See :meth:`clients.VaultClient.batch`."""
        results: list[Result] = []
        for req in _wire.batch_requests(operations):
            resp = await self._call(self._crypto.Batch, req, idempotent=True)
            results.extend(_wire.result_from_wire(r) for r in resp.results)
        return results

    async def stream(self, operations: Iterable[Operation]) -> AsyncIterator[Result]:
        """See :meth:`clients.VaultClient.stream`."""
        requests = (_wire.operation_to_wire(i, op) for i, op in enumerate(operations))
        call = self._crypto.Stream(requests, metadata=self._metadata)
        async for msg in self._stream(call):
            yield _wire.result_from_wire(msg)

    async def sign_many(self, key: str, messages: Iterable[bytes]) -> list[bytes]:
        return _wire.unwrap(await self.batch(Sign(key, m) for m in messages))

    async def verify_many(self, key: str, pairs: Iterable[tuple[bytes, bytes]]) -> list[bool]:
        return _wire.unwrap(await self.batch(Verify(key, m, s) for m, s in pairs))

    async def encrypt_many(
        self, key: str, plaintexts: Iterable[bytes], associated_data: bytes = b""
    ) -> list[bytes]:
        return _wire.unwrap(await self.batch(Encrypt(key, p, associated_data) for p in plaintexts))

    async def decrypt_many(
        self, key: str, ciphertexts: Iterable[bytes], associated_data: bytes = b""
    ) -> list[bytes]:
        return _wire.unwrap(
            await self.batch(Decrypt(key, c, associated_data) for c in ciphertexts)
        )

    async def mac_many(self, key: str, messages: Iterable[bytes]) -> list[bytes]:
        return _wire.unwrap(await self.batch(Mac(key, m) for m in messages))

    async def verify_mac_many(self, key: str, pairs: Iterable[tuple[bytes, bytes]]) -> list[bool]:
        return _wire.unwrap(await self.batch(VerifyMac(key, m, t) for m, t in pairs))

    # --- stats ---------------------------------------------------------------------------

    async def stats(self) -> stats_pb2.Stats:
        return await self._call(self._stats.GetStats, stats_pb2.GetStatsRequest(), idempotent=True)

    async def watch_stats(self, interval: float = 1.0) -> AsyncIterator[stats_pb2.Stats]:
        call = self._stats.WatchStats(
            stats_pb2.WatchStatsRequest(interval_seconds=interval), metadata=self._metadata
        )
        async for msg in self._stream(call):
            yield msg
