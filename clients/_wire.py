"""Between the client's types and the wire: requests, responses, targets.

Shared by the sync and the asyncio client so the two differ only in how they
wait.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from secretvault.api._proto.secretvault.v1 import keys_pb2
from secretvault.api.errors import InvalidArgument
from secretvault.api.paths import default_socket_path
from secretvault.api.pubkeys import FORMATS
from secretvault.api.socketpath import check_socket_path
from secretvault.clients import _errors, local

if TYPE_CHECKING:  # the records load when a call returns one (they cost to create)
    from secretvault.api._proto.secretvault.v1 import crypto_pb2
    from secretvault.clients._ops import Result
    from secretvault.clients._options import TlsConfig
    from secretvault.clients._types import Key, PublicKey

KEY_TYPE_TO_WIRE: dict[str, keys_pb2.KeyType] = {
    "ed25519": keys_pb2.KEY_TYPE_ED25519,
    "x25519": keys_pb2.KEY_TYPE_X25519,
    "xchacha20-poly1305": keys_pb2.KEY_TYPE_XCHACHA20_POLY1305,
    "hmac-sha256": keys_pb2.KEY_TYPE_HMAC_SHA256,
}
KEY_TYPE_FROM_WIRE: dict[int, str] = {v: k for k, v in KEY_TYPE_TO_WIRE.items()}
FORMAT_TO_WIRE: dict[str, keys_pb2.PublicKeyFormat] = {
    "raw": keys_pb2.PUBLIC_KEY_FORMAT_RAW,
    "pem": keys_pb2.PUBLIC_KEY_FORMAT_PEM,
    "openssh": keys_pb2.PUBLIC_KEY_FORMAT_OPENSSH,
    "jwk": keys_pb2.PUBLIC_KEY_FORMAT_JWK,
}

MAX_MESSAGE_BYTES = 64 << 20

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # reconnect quickly after a server restart (grpc's default starts at 1 s)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


# --- targets ------------------------------------------------------------------------

_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where the vault listens: a Unix socket path or a TLS ``host:port``."""

    unix_path: str | None
    address: str | None

    @property
    def grpc_target(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        assert self.address is not None
        return self.address

    def __str__(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path is not None else str(self.address)


def parse_target(target: str | os.PathLike[str] | None) -> Target:
    """``None`` (``$SECRETVAULT_SOCKET`` or the server's default socket), a
    socket path (``/run/x.sock``, ``./x.sock``, ``unix:PATH``) or ``host:port``.
    """
    if target is None:
        return Target(os.path.abspath(default_socket_path()), None)
    text = os.fspath(target)
    if not text:
        raise InvalidArgument("an empty vault address: give a socket path or host:port")
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        return Target(os.path.abspath(path), None)
    if "/" not in text and _HOST_PORT.fullmatch(text):
        return Target(None, text)
    return Target(os.path.abspath(text), None)


def make_credentials(tls: TlsConfig) -> Any:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )


def channel_options(
    tls: TlsConfig | None, extra: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    options = list(CHANNEL_OPTIONS)
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    options.extend(extra)
    return options


def check_target(target: Target, tls: TlsConfig | None) -> None:
    if target.address is not None and tls is None:
        raise InvalidArgument(
            f"{target} is a TCP address: the vault serves TCP only over TLS; "
            "pass tls=TlsConfig(ca=..., cert=..., key=...)"
        )
    if target.unix_path is not None and tls is not None:
        raise InvalidArgument(f"{target} is a Unix socket: TLS applies to host:port targets only")
    if target.unix_path is not None:
        # refused when another user could swap a directory on the path for theirs;
        # the socket's own directory may be the server's user's
        check_socket_path(target.unix_path, uids={os.geteuid()}, foreign_socket_dir=True,
                          what="the vault socket")


# --- keys ----------------------------------------------------------------------------


def key_type_to_wire(key_type: str) -> keys_pb2.KeyType:
    return KEY_TYPE_TO_WIRE[local.check_key_type(key_type)]


def key_type_from_wire(value: int) -> str:
    return KEY_TYPE_FROM_WIRE.get(value, f"unknown({value})")


def _time(ts: Any) -> datetime:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def key_from_wire(msg: keys_pb2.Key) -> Key:
    from secretvault.clients._types import Key, KeyVersion

    return Key(
        name=msg.name,
        type=key_type_from_wire(msg.type),
        created=_time(msg.create_time),
        primary_version=msg.primary_version,
        min_decryption_version=msg.min_decryption_version,
        labels=dict(msg.labels),
        versions=tuple(
            KeyVersion(
                version=v.version,
                created=_time(v.create_time),
                public_key=bytes(v.public_key) or None,
                damaged=v.damaged or None,
            )
            for v in msg.versions
        ),
    )


def public_key_request(name: str, version: int, fmt: str) -> keys_pb2.GetPublicKeyRequest:
    if fmt not in FORMAT_TO_WIRE:
        raise InvalidArgument(f"unknown public key format {fmt!r}; use one of {', '.join(FORMATS)}")
    # the raw bytes are always fetched; other formats are encoded locally from
    # them with the same code the server uses (secretvault.api.pubkeys)
    return keys_pb2.GetPublicKeyRequest(
        name=name, version=version, format=keys_pb2.PUBLIC_KEY_FORMAT_RAW
    )


def public_key_from_wire(
    name: str, fmt: str, msg: keys_pb2.GetPublicKeyResponse, *, comment: str = ""
) -> PublicKey:
    from secretvault.clients._types import PublicKey

    key_type = key_type_from_wire(msg.type)
    raw = bytes(msg.public_key)
    data = local.export_public_key(
        key_type, raw, fmt, comment=comment, kid=f"{name}#{msg.version}" if fmt == "jwk" else None
    )
    return PublicKey(name, key_type, msg.version, fmt, data, raw)


# --- batch results -------------------------------------------------------------------


def result_from_wire(msg: crypto_pb2.OperationResult) -> Result:
    which = msg.WhichOneof("result")
    if which == "sign":
        return bytes(msg.sign.signature)
    if which == "verify":
        return bool(msg.verify.valid)
    if which == "encrypt":
        return bytes(msg.encrypt.ciphertext)
    if which == "decrypt":
        return bytes(msg.decrypt.plaintext)
    if which == "mac":
        return bytes(msg.mac.mac)
    if which == "verify_mac":
        return bool(msg.verify_mac.valid)
    if which == "error":
        return _errors.from_code_number(msg.error.code, msg.error.error, msg.error.message)
    return _errors.from_status("INTERNAL", None, f"operation {msg.id}: the server sent no result")


def unwrap(results: Sequence[Result]) -> list[Any]:
    """The results of a homogeneous batch, raising the first failed one's error."""
    out: list[Any] = []
    for r in results:
        if isinstance(r, Exception):
            raise r
        out.append(r)
    return out
