"""The synchronous client: :class:`VaultClient`.

::

    from secretvault.clients import VaultClient

    with VaultClient() as vault:                      # $SECRETVAULT_SOCKET or the default
        vault.create_key("ci/release", "ed25519")
        token = vault.sign("ci/release", b"artifact digest")
        assert vault.public_key("ci/release").verify(b"artifact digest", token)

Every failure is a :class:`secretvault.api.errors.VaultError` subclass with the same
name the server raised (``KeyNotFound``, ``PermissionDenied``...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2

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

T = TypeVar("T")
Req = TypeVar("Req")


DEFAULT_TIMEOUT = 30.0


class VaultClient:
    """A connection to one vault, over a Unix socket or TLS.

    ``target``: ``None`` for ``$SECRETVAULT_SOCKET`` (else the server's
    default socket), a socket path, or ``host:port`` with ``tls``.
    ``timeout`` bounds each attempt of each call, in seconds.
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
        if tls is None:
            channel = grpc.insecure_channel(self.target.grpc_target, options=opts)
        else:
            channel = grpc.secure_channel(
                self.target.grpc_target, _wire.make_credentials(tls), options=opts
            )
        self._raw_channel = channel
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self._channel = channel
        self._keys, self._crypto, self._stats = _stubs.sync_stubs(channel)
        self._health = _stubs.health_check(channel)
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._raw_channel.close()

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VaultClient({str(self.target)!r})"

    # --- the one call path: retries and error mapping --------------------------------

    def _ready(self, wait: float) -> bool:
        """Whether the channel connects within ``wait`` seconds.

        A health check sent with ``wait_for_ready`` stays queued in the
        client until a connection is up (or ``wait`` ends): any answer, even
        an error status, proves one was.  (``grpc.channel_ready_future`` would
        do, but its polling thread can fail noisily when the channel closes
        right after.)
        """
        try:
            self._health(
                health_pb2.HealthCheckRequest(),
                timeout=wait,
                metadata=self._metadata,
                wait_for_ready=True,
            )
        except grpc.RpcError as e:
            return _errors.status_name(e.code()) not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        return True

    def _call(self, rpc: _stubs.UnaryUnary[Req, T], request: Req, *, idempotent: bool) -> T:
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
            if not idempotent and not self._ready(
                max(policy.connect_wait, policy.backoff(attempt))
            ):
                if attempt >= policy.max_attempts:
                    raise _errors.from_status(
                        "UNAVAILABLE", None, "the channel did not connect", target=str(self.target)
                    )
                continue
            try:
                return rpc(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                err = _errors.from_rpc_error(e, target=str(self.target))
            if err.status != "UNAVAILABLE":
                raise err
            if not idempotent and not isinstance(err, ShuttingDown):
                raise _errors.outcome_unknown(err)
            if attempt >= policy.max_attempts:
                raise err
            time.sleep(policy.backoff(attempt))

    def _stream(self, calls: _stubs.Streaming[T]) -> Iterator[T]:
        try:
            yield from calls
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e, target=str(self.target)) from None

    # --- keys ------------------------------------------------------------------------

    def create_key(self, name: str, type: str, labels: Mapping[str, str] | None = None) -> Key:
        """A new key, generated inside the vault, version 1."""
        req = keys_pb2.CreateKeyRequest(
            name=name, type=_wire.key_type_to_wire(type), labels=dict(labels or {})
        )
        return _wire.key_from_wire(self._call(self._keys.CreateKey, req, idempotent=False))

    def import_key_public(self) -> bytes:
        """The vault's X25519 import public key (what key material is sealed to)."""
        resp = self._call(
            self._keys.GetImportKey, keys_pb2.GetImportKeyRequest(), idempotent=True
        )
        return bytes(resp.public_key)

    def import_key(
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
        wrapped = local.seal_for_import(self.import_key_public(), type, material)
        return self.import_wrapped(name, type, wrapped, labels)

    def import_wrapped(
        self, name: str, type: str, wrapped: bytes, labels: Mapping[str, str] | None = None
    ) -> Key:
        """Import material already sealed with ``crypto_box_seal`` to the import key."""
        req = keys_pb2.ImportKeyRequest(
            name=name,
            type=_wire.key_type_to_wire(type),
            wrapped_key=wrapped,
            labels=dict(labels or {}),
        )
        return _wire.key_from_wire(self._call(self._keys.ImportKey, req, idempotent=False))

    def get_key(self, name: str) -> Key:
        req = keys_pb2.GetKeyRequest(name=name)
        return _wire.key_from_wire(self._call(self._keys.GetKey, req, idempotent=True))

    def iter_keys(self, prefix: str = "", *, page_size: int = 0) -> Iterator[Key]:
        """Every key whose name starts with ``prefix``, page by page."""
        token = ""
        while True:
            req = keys_pb2.ListKeysRequest(prefix=prefix, page_size=page_size, page_token=token)
            resp = self._call(self._keys.ListKeys, req, idempotent=True)
            for k in resp.keys:
                yield _wire.key_from_wire(k)
            token = resp.next_page_token
            if not token:
                return

    def list_keys(self, prefix: str = "") -> list[Key]:
        return list(self.iter_keys(prefix))

    def rotate_key(self, name: str) -> Key:
        """A new primary version; older versions stay for decrypt and verify."""
        req = keys_pb2.RotateKeyRequest(name=name)
        return _wire.key_from_wire(self._call(self._keys.RotateKey, req, idempotent=False))

    def set_min_decryption_version(self, name: str, version: int) -> Key:
        req = keys_pb2.SetMinDecryptionVersionRequest(name=name, version=version)
        return _wire.key_from_wire(
            self._call(self._keys.SetMinDecryptionVersion, req, idempotent=False)
        )

    def delete_key_version(self, name: str, version: int) -> Key:
        req = keys_pb2.DeleteKeyVersionRequest(name=name, version=version)
        return _wire.key_from_wire(self._call(self._keys.DeleteKeyVersion, req, idempotent=False))

    def delete_key(self, name: str) -> None:
        """Zero every version's memory and remove every sealed record."""
        self._call(self._keys.DeleteKey, keys_pb2.DeleteKeyRequest(name=name), idempotent=False)

    def public_key(self, name: str, *, version: int = 0, format: str = "raw") -> PublicKey:
        """An Ed25519 or X25519 public key (``version`` 0: the primary)."""
        req = _wire.public_key_request(name, version, format)
        resp = self._call(self._keys.GetPublicKey, req, idempotent=True)
        return _wire.public_key_from_wire(name, format, resp, comment=name)

    # --- crypto ------------------------------------------------------------------------

    def sign(self, key: str, message: bytes) -> bytes:
        """An Ed25519 signature token (7-byte header + 64-byte signature)."""
        req = crypto_pb2.SignRequest(key=key, message=message)
        return bytes(self._call(self._crypto.Sign, req, idempotent=True).signature)

    def verify(self, key: str, message: bytes, signature: bytes) -> bool:
        req = crypto_pb2.VerifyRequest(key=key, message=message, signature=signature)
        return bool(self._call(self._crypto.Verify, req, idempotent=True).valid)

    def encrypt(self, key: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """An XChaCha20-Poly1305 token (the vault picks the nonce)."""
        req = crypto_pb2.EncryptRequest(
            key=key, plaintext=plaintext, associated_data=associated_data
        )
        # not idempotent in output (a fresh nonce) but safe to repeat: no state changes
        return bytes(self._call(self._crypto.Encrypt, req, idempotent=True).ciphertext)

    def decrypt(self, key: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """Open an XChaCha20-Poly1305 token or an X25519 sealed-box token."""
        req = crypto_pb2.DecryptRequest(
            key=key, ciphertext=ciphertext, associated_data=associated_data
        )
        return bytes(self._call(self._crypto.Decrypt, req, idempotent=True).plaintext)

    def mac(self, key: str, message: bytes) -> bytes:
        """An HMAC-SHA-256 token (7-byte header + 32-byte MAC)."""
        req = crypto_pb2.MacRequest(key=key, message=message)
        return bytes(self._call(self._crypto.Mac, req, idempotent=True).mac)

    def verify_mac(self, key: str, message: bytes, mac: bytes) -> bool:
        req = crypto_pb2.VerifyMacRequest(key=key, message=message, mac=mac)
        return bool(self._call(self._crypto.VerifyMac, req, idempotent=True).valid)

    # --- batches ------------------------------------------------------------------------

    def batch(self, operations: Iterable[Operation]) -> list[Result]:
        """Run many operations in as few messages as the limits allow.

        Results come in order; each is the value or that operation's own
        :class:`VaultError` (the others still run).  Split into BatchRequests
        of at most 10,000 operations; each request is retried on
        UNAVAILABLE (every batch operation is safe to repeat).
        """
        results: list[Result] = []
        for req in _wire.batch_requests(operations):
            resp = self._call(self._crypto.Batch, req, idempotent=True)
            results.extend(_wire.result_from_wire(r) for r in resp.results)
        return results

    def stream(self, operations: Iterable[Operation]) -> Iterator[Result]:
        """The same over one bidirectional stream, results in order as they come.

        Not retried: a stream that fails part-way raises the mapped error.
        """
        requests = (_wire.operation_to_wire(i, op) for i, op in enumerate(operations))
        calls = self._crypto.Stream(requests, metadata=self._metadata)
        for msg in self._stream(calls):
            yield _wire.result_from_wire(msg)

    def sign_many(self, key: str, messages: Iterable[bytes]) -> list[bytes]:
        """Signature tokens for each message; raises the first failure."""
        return _wire.unwrap(self.batch(Sign(key, m) for m in messages))

    def verify_many(self, key: str, pairs: Iterable[tuple[bytes, bytes]]) -> list[bool]:
        """Verdicts for (message, signature) pairs; raises the first failure."""
        return _wire.unwrap(self.batch(Verify(key, m, s) for m, s in pairs))

    def encrypt_many(
        self, key: str, plaintexts: Iterable[bytes], associated_data: bytes = b""
    ) -> list[bytes]:
        return _wire.unwrap(self.batch(Encrypt(key, p, associated_data) for p in plaintexts))

    def decrypt_many(
        self, key: str, ciphertexts: Iterable[bytes], associated_data: bytes = b""
    ) -> list[bytes]:
        return _wire.unwrap(self.batch(Decrypt(key, c, associated_data) for c in ciphertexts))

    def mac_many(self, key: str, messages: Iterable[bytes]) -> list[bytes]:
        return _wire.unwrap(self.batch(Mac(key, m) for m in messages))

    def verify_mac_many(self, key: str, pairs: Iterable[tuple[bytes, bytes]]) -> list[bool]:
        return _wire.unwrap(self.batch(VerifyMac(key, m, t) for m, t in pairs))

    # --- stats -----------------------------------------------------------------------------

    def stats(self) -> stats_pb2.Stats:
        """What secret memory costs right now (the ``Stats`` message)."""
        return self._call(self._stats.GetStats, stats_pb2.GetStatsRequest(), idempotent=True)

    def watch_stats(self, interval: float = 1.0) -> Generator[stats_pb2.Stats, None, None]:
        """A Stats message every ``interval`` seconds until the iterator is closed."""
        calls = self._stats.WatchStats(
            stats_pb2.WatchStatsRequest(interval_seconds=interval), metadata=self._metadata
        )
        try:
            yield from self._stream(calls)
        finally:
            calls.cancel()
