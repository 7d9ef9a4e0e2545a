"""Targets, batch chunking, results and keys off the wire."""

from __future__ import annotations

import os

import pytest

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2
from secretvault.api.errors import InvalidArgument, KeyNotFound, VaultError
from secretvault.clients import _ops, _wire
from secretvault.clients._ops import Decrypt, Encrypt, Mac, Sign, Verify
from secretvault.clients._options import RetryPolicy, TlsConfig


@pytest.mark.parametrize(
    ("text", "unix", "address"),
    [
        ("/run/secretvault/secretvault.sock", "/run/secretvault/secretvault.sock", None),
        ("unix:/tmp/v.sock", "/tmp/v.sock", None),
        ("unix:///tmp/v.sock", "/tmp/v.sock", None),
        ("localhost:7443", None, "localhost:7443"),
        ("10.0.0.2:443", None, "10.0.0.2:443"),
        ("[::1]:443", None, "[::1]:443"),
    ],
)
def test_parse_target(text: str, unix: str | None, address: str | None) -> None:
    t = _wire.parse_target(text)
    assert (t.unix_path, t.address) == (unix, address)


def test_relative_paths_and_plain_names_are_sockets() -> None:
    assert _wire.parse_target("v.sock").unix_path == os.path.abspath("v.sock")
    assert _wire.parse_target("./run/v.sock").unix_path == os.path.abspath("run/v.sock")


def test_default_target_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRETVAULT_SOCKET", "/tmp/elsewhere.sock")
    assert _wire.parse_target(None).unix_path == "/tmp/elsewhere.sock"


def test_tcp_needs_tls_and_sockets_refuse_it() -> None:
    with pytest.raises(InvalidArgument, match="TLS"):
        _wire.check_target(_wire.parse_target("localhost:1"), None)
    with pytest.raises(InvalidArgument, match="Unix socket"):
        _wire.check_target(_wire.parse_target("/tmp/x.sock"), TlsConfig(ca=b"x"))
    with pytest.raises(InvalidArgument):
        TlsConfig(ca=b"x", cert=b"y")  # a certificate without its key


def test_batches_are_split_at_the_operation_limit() -> None:
    ops = [Sign("k", b"m")] * (2 * _ops.MAX_BATCH_OPERATIONS + 5)
    reqs = list(_ops.batch_requests(ops))
    assert [len(r.operations) for r in reqs] == [10_000, 10_000, 5]
    ids = [op.id for r in reqs for op in r.operations]
    assert ids == list(range(len(ops)))


def test_batches_are_split_by_size() -> None:
    big = b"x" * (1 << 20)
    reqs = list(_ops.batch_requests([Encrypt("k", big)] * 7))
    assert all(sum(len(o.encrypt.plaintext) for o in r.operations) <= _ops.MAX_BATCH_BYTES
               for r in reqs)
    assert sum(len(r.operations) for r in reqs) == 7
    assert len(reqs) >= 3


def test_operations_to_wire() -> None:
    op = _ops.operation_to_wire(4, Verify("k", b"m", b"s"))
    assert op.id == 4 and op.WhichOneof("op") == "verify" and op.verify.signature == b"s"
    op = _ops.operation_to_wire(5, Decrypt("k", b"c", b"ad"))
    assert op.decrypt.associated_data == b"ad"
    assert _ops.operation_to_wire(6, Mac("k", b"m")).WhichOneof("op") == "mac"
    with pytest.raises(InvalidArgument):
        _ops.operation_to_wire(7, "sign")  # type: ignore[arg-type]


def test_results_from_wire() -> None:
    ok = crypto_pb2.OperationResult(id=1, sign=crypto_pb2.SignResponse(signature=b"t"))
    bad = crypto_pb2.OperationResult(
        id=2, error=crypto_pb2.OperationError(code=5, error="KeyNotFound", message="no key 'x'")
    )
    valid = crypto_pb2.OperationResult(id=3, verify=crypto_pb2.VerifyResponse(valid=True))
    assert _wire.result_from_wire(ok) == b"t"
    err = _wire.result_from_wire(bad)
    assert isinstance(err, KeyNotFound) and str(err) == "no key 'x'"
    assert _wire.result_from_wire(valid) is True
    assert isinstance(_wire.result_from_wire(crypto_pb2.OperationResult(id=4)), VaultError)
    with pytest.raises(KeyNotFound):
        _wire.unwrap([b"a", err])


def test_key_from_wire() -> None:
    msg = keys_pb2.Key(
        name="k", type=keys_pb2.KEY_TYPE_X25519, primary_version=2, min_decryption_version=1,
        labels={"team": "ci"},
        versions=[keys_pb2.KeyVersion(version=1, public_key=b"p" * 32),
                  keys_pb2.KeyVersion(version=2, public_key=b"q" * 32, damaged="bad tag")],
    )
    msg.create_time.FromSeconds(1_700_000_000)
    key = _wire.key_from_wire(msg)
    assert key.type == "x25519" and key.labels == {"team": "ci"}
    assert key.created.timestamp() == 1_700_000_000
    assert key.version().version == 2 and key.version().damaged == "bad tag"
    assert key.version(1).public_key == b"p" * 32
    with pytest.raises(InvalidArgument):
        key.version(3)


def test_public_key_formats_are_checked_before_sending() -> None:
    with pytest.raises(InvalidArgument, match="unknown public key format"):
        _wire.public_key_request("k", 0, "der")


def test_backoff_is_bounded_and_grows() -> None:
    p = RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=0.5)
    for attempt in range(1, 10):
        ceiling = min(0.5, 0.1 * 2 ** (attempt - 1))
        assert all(0 <= p.backoff(attempt) <= ceiling for _ in range(50))
    with pytest.raises(InvalidArgument):
        RetryPolicy(max_attempts=0)
