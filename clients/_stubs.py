"""Types for the generated gRPC stubs, which grpcio-tools leaves untyped.

The handwritten clients see only these protocols; :func:`sync_stubs` and
:func:`async_stubs` are the one place the untyped constructors are called.
Each asyncio protocol is its synchronous twin's name with ``Async`` in front
(``AsyncUnaryUnary`` / ``UnaryUnary``): ``scripts/gen-sync-client`` renames
one to the other when it writes the sync client from the asyncio one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from grpc_health.v1 import health_pb2, health_pb2_grpc

from secretvault.api._proto.secretvault.v1 import (
    crypto_pb2,
    crypto_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)

Req = TypeVar("Req", contravariant=True)
Resp = TypeVar("Resp", covariant=True)
Metadata = Sequence[tuple[str, str]]


class UnaryUnary(Protocol, Generic[Req, Resp]):
    def __call__(
        self, request: Req, *, timeout: float | None = ..., metadata: Metadata = ...
    ) -> Resp: ...


class AsyncUnaryUnary(Protocol, Generic[Req, Resp]):
    def __call__(
        self, request: Req, *, timeout: float | None = ..., metadata: Metadata = ...
    ) -> Awaitable[Resp]: ...


class Streaming(Protocol, Generic[Resp]):
    """A server-streaming call: iterate for responses, cancel to stop."""

    def __iter__(self) -> Iterator[Resp]: ...
    def cancel(self) -> bool: ...


class AsyncStreaming(Protocol, Generic[Resp]):
    def __aiter__(self) -> AsyncIterator[Resp]: ...
    def cancel(self) -> bool: ...


class KeyStub(Protocol):
    CreateKey: UnaryUnary[keys_pb2.CreateKeyRequest, keys_pb2.Key]
    GetImportKey: UnaryUnary[keys_pb2.GetImportKeyRequest, keys_pb2.GetImportKeyResponse]
    ImportKey: UnaryUnary[keys_pb2.ImportKeyRequest, keys_pb2.Key]
    GetKey: UnaryUnary[keys_pb2.GetKeyRequest, keys_pb2.Key]
    GetPublicKey: UnaryUnary[keys_pb2.GetPublicKeyRequest, keys_pb2.GetPublicKeyResponse]
    ListKeys: UnaryUnary[keys_pb2.ListKeysRequest, keys_pb2.ListKeysResponse]
    RotateKey: UnaryUnary[keys_pb2.RotateKeyRequest, keys_pb2.Key]
    SetMinDecryptionVersion: UnaryUnary[keys_pb2.SetMinDecryptionVersionRequest, keys_pb2.Key]
    DeleteKeyVersion: UnaryUnary[keys_pb2.DeleteKeyVersionRequest, keys_pb2.Key]
    DeleteKey: UnaryUnary[keys_pb2.DeleteKeyRequest, keys_pb2.DeleteKeyResponse]


class CryptoStub(Protocol):
    Sign: UnaryUnary[crypto_pb2.SignRequest, crypto_pb2.SignResponse]
    Verify: UnaryUnary[crypto_pb2.VerifyRequest, crypto_pb2.VerifyResponse]
    Encrypt: UnaryUnary[crypto_pb2.EncryptRequest, crypto_pb2.EncryptResponse]
    Decrypt: UnaryUnary[crypto_pb2.DecryptRequest, crypto_pb2.DecryptResponse]
    Mac: UnaryUnary[crypto_pb2.MacRequest, crypto_pb2.MacResponse]
    VerifyMac: UnaryUnary[crypto_pb2.VerifyMacRequest, crypto_pb2.VerifyMacResponse]
    Batch: UnaryUnary[crypto_pb2.BatchRequest, crypto_pb2.BatchResponse]

    def Stream(
        self, requests: Iterable[crypto_pb2.Operation], *, metadata: Metadata = ...
    ) -> Streaming[crypto_pb2.OperationResult]: ...


class StatsStub(Protocol):
    GetStats: UnaryUnary[stats_pb2.GetStatsRequest, stats_pb2.Stats]

    def WatchStats(
        self, request: stats_pb2.WatchStatsRequest, *, metadata: Metadata = ...
    ) -> Streaming[stats_pb2.Stats]: ...


class AsyncKeyStub(Protocol):
    CreateKey: AsyncUnaryUnary[keys_pb2.CreateKeyRequest, keys_pb2.Key]
    GetImportKey: AsyncUnaryUnary[keys_pb2.GetImportKeyRequest, keys_pb2.GetImportKeyResponse]
    ImportKey: AsyncUnaryUnary[keys_pb2.ImportKeyRequest, keys_pb2.Key]
    GetKey: AsyncUnaryUnary[keys_pb2.GetKeyRequest, keys_pb2.Key]
    GetPublicKey: AsyncUnaryUnary[keys_pb2.GetPublicKeyRequest, keys_pb2.GetPublicKeyResponse]
    ListKeys: AsyncUnaryUnary[keys_pb2.ListKeysRequest, keys_pb2.ListKeysResponse]
    RotateKey: AsyncUnaryUnary[keys_pb2.RotateKeyRequest, keys_pb2.Key]
    SetMinDecryptionVersion: AsyncUnaryUnary[
        keys_pb2.SetMinDecryptionVersionRequest, keys_pb2.Key
    ]
    DeleteKeyVersion: AsyncUnaryUnary[keys_pb2.DeleteKeyVersionRequest, keys_pb2.Key]
    DeleteKey: AsyncUnaryUnary[keys_pb2.DeleteKeyRequest, keys_pb2.DeleteKeyResponse]


class AsyncCryptoStub(Protocol):
    Sign: AsyncUnaryUnary[crypto_pb2.SignRequest, crypto_pb2.SignResponse]
    Verify: AsyncUnaryUnary[crypto_pb2.VerifyRequest, crypto_pb2.VerifyResponse]
    Encrypt: AsyncUnaryUnary[crypto_pb2.EncryptRequest, crypto_pb2.EncryptResponse]
    Decrypt: AsyncUnaryUnary[crypto_pb2.DecryptRequest, crypto_pb2.DecryptResponse]
    Mac: AsyncUnaryUnary[crypto_pb2.MacRequest, crypto_pb2.MacResponse]
    VerifyMac: AsyncUnaryUnary[crypto_pb2.VerifyMacRequest, crypto_pb2.VerifyMacResponse]
    Batch: AsyncUnaryUnary[crypto_pb2.BatchRequest, crypto_pb2.BatchResponse]

    def Stream(
        self, requests: Iterable[crypto_pb2.Operation], *, metadata: Metadata = ...
    ) -> AsyncStreaming[crypto_pb2.OperationResult]: ...


class AsyncStatsStub(Protocol):
    GetStats: AsyncUnaryUnary[stats_pb2.GetStatsRequest, stats_pb2.Stats]

    def WatchStats(
        self, request: stats_pb2.WatchStatsRequest, *, metadata: Metadata = ...
    ) -> AsyncStreaming[stats_pb2.Stats]: ...


class HealthCheck(Protocol):
    def __call__(
        self,
        request: health_pb2.HealthCheckRequest,
        *,
        timeout: float | None = ...,
        metadata: Metadata = ...,
        wait_for_ready: bool | None = ...,
    ) -> health_pb2.HealthCheckResponse: ...


def health_check(channel: Any) -> HealthCheck:
    """The standard ``grpc.health.v1.Health/Check`` (the server always serves it)."""
    check: HealthCheck = health_pb2_grpc.HealthStub(channel).Check
    return check


def sync_stubs(channel: Any) -> tuple[KeyStub, CryptoStub, StatsStub]:
    return (
        keys_pb2_grpc.KeyServiceStub(channel),  # type: ignore[no-untyped-call]
        crypto_pb2_grpc.CryptoServiceStub(channel),  # type: ignore[no-untyped-call]
        stats_pb2_grpc.StatsServiceStub(channel),  # type: ignore[no-untyped-call]
    )


def async_stubs(channel: Any) -> tuple[AsyncKeyStub, AsyncCryptoStub, AsyncStatsStub]:
    return (
        keys_pb2_grpc.KeyServiceStub(channel),  # type: ignore[no-untyped-call]
        crypto_pb2_grpc.CryptoServiceStub(channel),  # type: ignore[no-untyped-call]
        stats_pb2_grpc.StatsServiceStub(channel),  # type: ignore[no-untyped-call]
    )
