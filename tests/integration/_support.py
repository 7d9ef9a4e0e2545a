"""Helpers for the integration tests: real servers on real sockets.

Servers run either in the test process (:func:`start`, through
``secretvault.vault.server.create_server``) or as a child process (:class:`Child`,
through ``python -m secretvault serve``), on the lane's backend
(:data:`SERVER_BACKEND`: memfd_secret, or page-model where it is missing or
asked for, ``tests/_lane.py``) and in a short directory under /tmp (a Unix
socket path is limited to 107 bytes, which pytest's own tmp_path can exceed).
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nacl.public import PublicKey, SealedBox

from secretvault.api._proto.secretvault.v1 import (
    crypto_pb2,
    crypto_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)
from secretvault.vault.app import VaultConfig
from secretvault.vault.config import ServerConfig
from secretvault.vault.server import VaultServer, create_server
from tests import _lane

REPO = Path(__file__).resolve().parents[2]
ED25519 = keys_pb2.KEY_TYPE_ED25519
X25519 = keys_pb2.KEY_TYPE_X25519
AEAD = keys_pb2.KEY_TYPE_XCHACHA20_POLY1305
HMAC = keys_pb2.KEY_TYPE_HMAC_SHA256
#: what the servers below run on unless a test names a backend, and what they report
SERVER_BACKEND = _lane.server_backend()
SERVER_PROTECTION = _lane.PROTECTION[SERVER_BACKEND]
SERVER_DIRECT_MAP_SOURCE = _lane.DIRECT_MAP_SOURCE[SERVER_BACKEND]


def short_dir() -> str:
    return tempfile.mkdtemp(prefix="sv-", dir="/tmp")


def vault_config(base: str, **changes: Any) -> VaultConfig:
    # no passphrase: the vault creates an unseal key file in the data dir
    defaults: dict[str, Any] = {
        "data_dir": os.path.join(base, "data"),
        "socket": os.path.join(base, "run", "vault.sock"),
        "harden": False,  # keep pytest dumpable (other tests trace it)
        "backend": SERVER_BACKEND,
    }
    defaults.update(changes)
    return VaultConfig(**defaults)


def start(base: str, *, vault: dict[str, Any] | None = None, **server: Any) -> VaultServer:
    """An in-process server on ``base/run/vault.sock``, started."""
    os.environ.pop("SECRETVAULT_PASSPHRASE", None)
    server.setdefault("grace_seconds", 2.0)
    server.setdefault("audit_log", os.path.join(base, "audit.log"))
    return create_server(ServerConfig(vault=vault_config(base, **(vault or {})), **server))


def channel(path: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{path}")


@dataclass
class Stubs:
    channel: grpc.Channel
    keys: Any = field(init=False)
    crypto: Any = field(init=False)
    stats: Any = field(init=False)

    def __post_init__(self) -> None:
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.crypto = crypto_pb2_grpc.CryptoServiceStub(self.channel)
        self.stats = stats_pb2_grpc.StatsServiceStub(self.channel)

    def create(self, name: str, key_type: int = ED25519) -> Any:
        return self.keys.CreateKey(keys_pb2.CreateKeyRequest(name=name, type=key_type))

    def sign(self, key: str, message: bytes = b"m") -> Any:
        return self.crypto.Sign(crypto_pb2.SignRequest(key=key, message=message))

    def get_stats(self) -> Any:
        return self.stats.GetStats(stats_pb2.GetStatsRequest())


def stubs(path: str) -> Stubs:
    return Stubs(channel(path))


def wrap(import_public_key: bytes, material: bytes) -> bytes:
    return SealedBox(PublicKey(import_public_key)).encrypt(material)


def code_of(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str, str | None]:
    """(status, details, secretvault-error) of a call that must fail."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as e:
        meta = dict(e.trailing_metadata() or ())
        return e.code(), e.details() or "", meta.get("secretvault-error")
    raise AssertionError(f"{call} succeeded; it should have failed")


# --- child-process servers ------------------------------------------------------------


class Child:
    """``python -m secretvault serve`` in a child process; always killed at exit."""

    def __init__(self, base: str, args: Sequence[str] = (), *,
                 prefix: Sequence[str] = (), env: dict[str, str] | None = None,
                 stdin: int = subprocess.DEVNULL) -> None:
        self.base = base
        args = ["--backend", SERVER_BACKEND, *args]  # a test's own --backend comes later, wins
        self.socket = os.path.join(base, "run", "vault.sock")
        self.stderr_path = os.path.join(base, "stderr.txt")
        full_env = {k: v for k, v in os.environ.items() if k != "SECRETVAULT_PASSPHRASE"}
        full_env["PYTHONPATH"] = str(REPO)
        full_env.update(env or {})
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "secretvault", "serve", "--socket", self.socket,
             "--data-dir", os.path.join(base, "data"), *args],
            stdin=stdin, stdout=subprocess.DEVNULL, stderr=self._stderr,
            env=full_env, cwd=str(REPO),
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.stderr()}")
            if "secretvault is serving" in self.stderr():
                return
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout} s: {self.stderr()}")

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._stderr.close()


def cleanup(base: str) -> None:
    shutil.rmtree(base, ignore_errors=True)


# --- TLS material -------------------------------------------------------------------------


def _name(cn: str | None) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else [])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Pki:
    """A CA that issues a server certificate for localhost and client certificates."""

    directory: str
    ca_key: ec.EllipticCurvePrivateKey = field(init=False)
    ca_cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.ca_cert = (
            x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.write("ca.pem", self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    @property
    def ca_path(self) -> str:
        return os.path.join(self.directory, "ca.pem")

    def issue(self, name: str, *, cn: str | None, uri: str | None = None, server: bool = False,
              ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None
              ) -> tuple[str, str]:
        """(certificate path, key path)."""
        ca_key, ca_cert = ca or (self.ca_key, self.ca_cert)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        if server:
            sans.append(x509.DNSName("localhost"))
        if uri:
            sans.append(x509.UniformResourceIdentifier(uri))
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return (self.write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
                self.write(f"{name}.key", _key_pem(key)))


def tls_channel(port: int, pki: Pki, client: tuple[str, str] | None) -> grpc.Channel:
    with open(pki.ca_path, "rb") as f:
        ca = f.read()
    key = chain = None
    if client is not None:
        with open(client[0], "rb") as f:
            chain = f.read()
        with open(client[1], "rb") as f:
            key = f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                         certificate_chain=chain)
    return grpc.secure_channel(f"localhost:{port}", creds)
