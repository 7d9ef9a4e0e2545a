"""Batch operations: the records (:class:`Sign`, :class:`Verify`...) and their wire form.

They load with the first batch, stream or ``*_many`` call: a client that makes
single calls never creates these classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeAlias

from secretvault.api._proto.secretvault.v1 import crypto_pb2
from secretvault.api.errors import InvalidArgument, VaultError
from secretvault.api.limits import MAX_BATCH_OPERATIONS
from secretvault.api.limits import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES_SERVER


@dataclass(frozen=True, slots=True)
class Sign:
    key: str
    message: bytes


@dataclass(frozen=True, slots=True)
class Verify:
    key: str
    message: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Encrypt:
    key: str
    plaintext: bytes
    associated_data: bytes = b""


@dataclass(frozen=True, slots=True)
class Decrypt:
    key: str
    ciphertext: bytes
    associated_data: bytes = b""


@dataclass(frozen=True, slots=True)
class Mac:
    key: str
    message: bytes


@dataclass(frozen=True, slots=True)
class VerifyMac:
    key: str
    message: bytes
    mac: bytes


Operation: TypeAlias = Sign | Verify | Encrypt | Decrypt | Mac | VerifyMac
#: a token (sign, encrypt, mac), a plaintext (decrypt), a verdict (verify,
#: verify_mac) or the error of that one operation
Result: TypeAlias = bytes | bool | VaultError


# --- the wire form ---------------------------------------------------------------------

#: keep each batch message well under the server's message size limit
MAX_BATCH_BYTES = MAX_MESSAGE_BYTES_SERVER * 3 // 4


def operation_to_wire(op_id: int, op: Operation) -> crypto_pb2.Operation:
    if isinstance(op, Sign):
        return crypto_pb2.Operation(
            id=op_id, sign=crypto_pb2.SignRequest(key=op.key, message=op.message)
        )
    if isinstance(op, Verify):
        return crypto_pb2.Operation(
            id=op_id,
            verify=crypto_pb2.VerifyRequest(key=op.key, message=op.message, signature=op.signature),
        )
    if isinstance(op, Encrypt):
        return crypto_pb2.Operation(
            id=op_id,
            encrypt=crypto_pb2.EncryptRequest(
                key=op.key, plaintext=op.plaintext, associated_data=op.associated_data
            ),
        )
    if isinstance(op, Decrypt):
        return crypto_pb2.Operation(
            id=op_id,
            decrypt=crypto_pb2.DecryptRequest(
                key=op.key, ciphertext=op.ciphertext, associated_data=op.associated_data
            ),
        )
    if isinstance(op, Mac):
        return crypto_pb2.Operation(
            id=op_id, mac=crypto_pb2.MacRequest(key=op.key, message=op.message)
        )
    if isinstance(op, VerifyMac):
        return crypto_pb2.Operation(
            id=op_id,
            verify_mac=crypto_pb2.VerifyMacRequest(key=op.key, message=op.message, mac=op.mac),
        )
    raise InvalidArgument(f"not a batch operation: {type(op).__name__}")


def _size(op: Operation) -> int:
    if isinstance(op, Sign | Mac):
        return len(op.key) + len(op.message) + 16
    if isinstance(op, Verify):
        return len(op.key) + len(op.message) + len(op.signature) + 16
    if isinstance(op, VerifyMac):
        return len(op.key) + len(op.message) + len(op.mac) + 16
    if isinstance(op, Encrypt):
        return len(op.key) + len(op.plaintext) + len(op.associated_data) + 16
    return len(op.key) + len(op.ciphertext) + len(op.associated_data) + 16


def batch_requests(operations: Iterable[Operation]) -> Iterator[crypto_pb2.BatchRequest]:
    """BatchRequests of at most 10,000 operations and about 3 MiB each."""
    chunk: list[crypto_pb2.Operation] = []
    size = 0
    for i, op in enumerate(operations):
        n = _size(op)
        if chunk and (len(chunk) >= MAX_BATCH_OPERATIONS or size + n > MAX_BATCH_BYTES):
            yield crypto_pb2.BatchRequest(operations=chunk)
            chunk, size = [], 0
        chunk.append(operation_to_wire(i, op))
        size += n
    if chunk:
        yield crypto_pb2.BatchRequest(operations=chunk)
