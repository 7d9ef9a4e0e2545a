"""The secretvault server under test, and the requests the benchmark sends it.

The server is the real one, started the way a user starts it --
``secretvault serve`` (``python -m secretvault serve``) as a child process, so
it has its own interpreter and GIL, like the echo server it is compared
with -- on a fresh data directory, with:

* its default Unix socket (the owner's identity: allowed everything);
* TCP on 127.0.0.1 (port picked by the kernel) with mutual TLS, the client
  certificate's SAN URI named in a policy that grants ``sign`` (and what the
  set-up needs) on ``bench/*``;
* the audit trail on: one JSON line per operation, written with one
  ``write(2)`` per call (per batch) to /dev/null, so its formatting and
  system call are paid as in production without filling a disk;
* no Prometheus endpoint (the per-operation counters are still kept).

Every form signs the same 64-byte message with one Ed25519 key,
``bench/sign``, created through the KeyService before the run; one
signature of each form (unary, batch, stream) over each transport is
verified with the key's public key before any figure is taken.  The batch
request carries 100 ``Operation``\\ s; the stream sends one ``Operation`` per
message.  The echo ceiling is handed the *serialized* form of the very same
requests, so both servers parse the same bytes off the wire.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from benchmarks._measure import PeerMissing
from benchmarks._rpc import (
    BATCH,
    RpcTarget,
    ServerProcess,
    child_env,
    tls_channel,
    unix_channel,
)
from benchmarks._tls import CLIENT_URI, TlsFiles
from benchmarks.crypto_limit import SIGN_MESSAGE

KEY_NAME = "bench/sign"

POLICY = f"""\
# written by benchmarks/vault_target.py for one benchmark run
[identities.bench]
tls = ["{CLIENT_URI}"]

[[identities.bench.allow]]
operations = ["sign", "verify", "get_public_key", "get_key", "get_stats"]
keys = ["bench/*"]
"""


def _pb() -> Any:
    from secretvault.api._proto.secretvault.v1 import crypto_pb2

    return crypto_pb2


def sign_request() -> Any:
    return _pb().SignRequest(key=KEY_NAME, message=SIGN_MESSAGE)


def batch_request() -> Any:
    pb = _pb()
    return pb.BatchRequest(
        operations=[pb.Operation(id=i, sign=sign_request()) for i in range(BATCH)]
    )


def stream_request() -> Any:
    return _pb().Operation(id=1, sign=sign_request())


def wire_requests_offline() -> dict[str, bytes]:
    """The serialized requests, for the echo server."""
    return {
        "unary": sign_request().SerializeToString(),
        "batch": batch_request().SerializeToString(),
        "stream": stream_request().SerializeToString(),
    }


def _signature(token: bytes) -> bytes:
    from secretvault.api import framing

    _version, sig = framing.unframe(framing.Kind.SIGNATURE, token)
    return sig


class VaultServer:
    """A real secretvault server in a child process, on a temp data dir."""

    def __init__(self, workdir: Path, tls: TlsFiles, *, workers: int = 0,
                 name: str = "secretvault serve") -> None:
        try:
            from secretvault.api._proto.secretvault.v1 import (
                crypto_pb2_grpc,
                keys_pb2,
                keys_pb2_grpc,
            )
        except ImportError as e:
            raise PeerMissing(f"the secretvault wire types are not importable ({e})") from e
        self._tls = tls
        self.socket = workdir / "run" / "vault.sock"
        policy = workdir / "policy.toml"
        policy.write_text(POLICY)
        argv = [
            sys.executable, "-m", "secretvault", "serve",
            "--socket", str(self.socket),
            "--data-dir", str(workdir / "data"),
            "--policy", str(policy),
            "--tcp", "127.0.0.1:0",
            "--tls-cert", str(tls.server_cert),
            "--tls-key", str(tls.server_key),
            "--client-ca", str(tls.ca_cert),
            "--audit-log", "/dev/null",
            "--grace", "1",
        ]
        if workers:
            # every worker unseals the store as it starts: the key is made first
            _make_key(workdir / "data")
            argv += ["--workers", str(workers)]
        env, repo = child_env()
        # the start-up summary names the TCP listener once every listener is up
        self._proc = ServerProcess(argv, name=name,
                                   ready=r"listening\s+tcp:127\.0\.0\.1:(\d+)",
                                   env=env, cwd=repo)
        self.port = self._proc.port
        # the generated stubs are untyped (clients/_proto is quarantined)
        self._crypto_stub: Any = crypto_pb2_grpc.CryptoServiceStub
        key_stub: Any = keys_pb2_grpc.KeyServiceStub
        try:
            with unix_channel(str(self.socket)) as ch:
                keys = key_stub(ch)
                if not workers:
                    keys.CreateKey(keys_pb2.CreateKeyRequest(
                        name=KEY_NAME, type=keys_pb2.KEY_TYPE_ED25519), timeout=30)
                pk = keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(
                    name=KEY_NAME, format=keys_pb2.PUBLIC_KEY_FORMAT_RAW), timeout=30)
            self.public_key = Ed25519PublicKey.from_public_bytes(pk.public_key)
            for transport in ("unix", "tls"):
                with self.channel(transport) as ch:
                    self._check(ch, transport)
        except grpc.RpcError as e:
            self.close()
            raise PeerMissing(
                f"the secretvault server refused the set-up: {e.code().name}: {e.details()}"
            ) from e
        except BaseException:
            self.close()
            raise

    def _check(self, channel: grpc.Channel, transport: str) -> None:
        """One signature of each form verifies: a figure about a broken server is none."""
        stub = self._crypto_stub(channel)
        sigs = [_signature(stub.Sign(sign_request(), timeout=30).signature)]
        batch = stub.Batch(batch_request(), timeout=30)
        if len(batch.results) != BATCH:
            raise PeerMissing(f"a batch of {BATCH} came back with {len(batch.results)} results")
        for r in batch.results:
            if r.WhichOneof("result") != "sign":
                raise PeerMissing(f"a batched sign failed over {transport}: {r}")
        sigs.append(_signature(batch.results[-1].sign.signature))
        streamed = list(stub.Stream(iter([stream_request()]), timeout=30))
        if len(streamed) != 1 or streamed[0].WhichOneof("result") != "sign":
            raise PeerMissing(f"a streamed sign failed over {transport}: {streamed}")
        sigs.append(_signature(streamed[0].sign.signature))
        for sig in sigs:
            try:
                self.public_key.verify(sig, SIGN_MESSAGE)
            except InvalidSignature:
                raise PeerMissing(
                    f"secretvault returned a signature that does not verify ({transport})"
                ) from None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def describe(self) -> str:
        return f"Unix socket {self.socket}, mutual TLS on 127.0.0.1:{self.port}"

    def wire_requests(self) -> dict[str, bytes]:
        return wire_requests_offline()

    @contextlib.contextmanager
    def channel(self, transport: str) -> Iterator[grpc.Channel]:
        ch = (unix_channel(str(self.socket)) if transport == "unix"
              else tls_channel(self.port, self._tls))
        with ch:
            yield ch

    def target(self, channel: grpc.Channel) -> RpcTarget:
        stub = self._crypto_stub(channel)
        return RpcTarget(stub.Sign, sign_request(), stub.Batch, batch_request(),
                         stub.Stream, stream_request())

    def close(self) -> None:
        # SIGTERM: the server drains, zeroes and unmaps its secret memory
        self._proc.stop()

    def __enter__(self) -> VaultServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _make_key(data_dir: Path) -> None:
    """``bench/sign`` in a new store at ``data_dir`` (its unseal key file beside it)."""
    from secretvault.vault.app import VaultConfig, open_vault

    v = open_vault(VaultConfig(data_dir=str(data_dir), socket=str(data_dir / "unused.sock"),
                               harden=False))
    try:
        v.keyring.create(KEY_NAME, "ed25519")
    finally:
        v.close()


# --- where the time goes: the same work in-process, without gRPC -----------------------------


class _ActiveContext:
    """The one thing ``CryptoServicer.Batch`` asks of its gRPC context.

    In-process there is no call that could be cancelled, so every operation
    runs, as it does over the wire before the deadline.
    """

    def is_active(self) -> bool:
        return True


@contextlib.contextmanager
def in_process_forms() -> Iterator[dict[str, tuple[Callable[[int], None], int]]]:
    """``(run(n), operations per n)`` over a vault opened in this process, no RPC.

    * ``keyring``: ``Keyring.sign`` -- name lookup, read lock, libsodium
      through the slot pointer, token framing;
    * ``servicer``: ``CryptoServicer.Batch`` on the serialized BatchRequest
      of 100 signs -- protobuf decode, 100 x (dispatch, ``Keyring.sign``,
      result message), protobuf encode -- counted per operation.

    The gap from the crypto limit to ``keyring`` is the vault core's Python;
    from ``servicer`` to the batch over a socket is gRPC, the edge
    interceptor (identity, policy, audit, counters) and the thread hand-offs.
    """
    import tempfile

    from secretvault.vault.app import VaultConfig, open_vault
    from secretvault.vault.servicers import CryptoServicer

    pb = _pb()
    with tempfile.TemporaryDirectory(prefix="sv-bench-inproc-") as d:
        try:
            v = open_vault(VaultConfig(data_dir=d, socket=str(Path(d) / "s"), harden=False))
        except Exception as e:
            raise PeerMissing(f"cannot open a vault in-process: {e}") from e
        try:
            v.keyring.create(KEY_NAME, "ed25519")
            ring, servicer, ctx = v.keyring, CryptoServicer(v.keyring), _ActiveContext()
            wire = batch_request().SerializeToString()
            check = pb.BatchResponse.FromString(
                servicer.Batch(pb.BatchRequest.FromString(wire), ctx).SerializeToString())
            if [r.WhichOneof("result") for r in check.results] != ["sign"] * BATCH:
                raise PeerMissing("the in-process servicer did not sign the whole batch")

            def keyring(n: int) -> None:
                for _ in range(n):
                    ring.sign(KEY_NAME, SIGN_MESSAGE)

            def batches(n: int) -> None:
                for _ in range(n):
                    servicer.Batch(pb.BatchRequest.FromString(wire), ctx).SerializeToString()

            yield {"keyring": (keyring, 1), "servicer": (batches, BATCH)}
        finally:
            v.close()
