"""The real server on a real Unix socket: every RPC, every status code, health,
reflection, stats, metrics, audit, listeners, TLS and mutual TLS."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import socket
import stat
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import VerifyKey

from secretvault.api import framing
from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2, stats_pb2
from secretvault.api.errors import FailedPrecondition
from secretvault.vault.config import ServerConfig
from secretvault.vault.server import VaultServer, create_server
from tests.integration._support import (
    AEAD,
    ED25519,
    HMAC,
    SERVER_BACKEND,
    SERVER_DIRECT_MAP_SOURCE,
    SERVER_PROTECTION,
    X25519,
    Pki,
    Stubs,
    cleanup,
    code_of,
    short_dir,
    start,
    stubs,
    tls_channel,
    vault_config,
    wrap,
)

C = grpc.StatusCode


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


@pytest.fixture(scope="module")
def server(base: str) -> Iterator[VaultServer]:
    with start(base, metrics="127.0.0.1:0") as s:
        yield s


@pytest.fixture(scope="module")
def vs(server: VaultServer) -> Stubs:
    return stubs(server.config.vault.socket)


def audit_lines(server: VaultServer) -> list[dict[str, Any]]:
    assert server.audit.path is not None
    with open(server.audit.path, encoding="ascii") as f:
        return [json.loads(line) for line in f]


# --- the socket -----------------------------------------------------------------------


def test_default_socket_is_0600_in_a_0700_directory_owned_by_the_server(
        server: VaultServer) -> None:
    path = server.config.vault.socket
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    dst = os.lstat(os.path.dirname(path))
    assert stat.S_IMODE(dst.st_mode) == 0o700
    assert dst.st_uid == os.geteuid()


def test_refuses_a_socket_directory_writable_by_others() -> None:
    base = short_dir()
    try:
        run = os.path.join(base, "run")
        os.mkdir(run)
        os.chmod(run, 0o777)
        with pytest.raises(FailedPrecondition, match="writable by others"):
            start(base)
        os.chmod(run, 0o700)
        os.rmdir(run)
        os.symlink("/tmp", run)
        with pytest.raises(FailedPrecondition, match="symlink"):
            start(base)
    finally:
        cleanup(base)


def test_removes_a_stale_socket_but_refuses_a_live_one(server: VaultServer) -> None:
    base = short_dir()
    try:
        run = os.path.join(base, "run")
        os.mkdir(run, 0o700)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(os.path.join(run, "vault.sock"))
        stale.close()  # bound, never listened, now closed: a dead server's socket
        with start(base) as s:
            assert stubs(s.config.vault.socket).create("stale-ok").name == "stale-ok"
        # a live server's socket is never taken over
        with pytest.raises(FailedPrecondition, match="already listening"):
            start(base, vault={"socket": server.config.vault.socket})
        assert stubs(server.config.vault.socket).get_stats().backend == SERVER_BACKEND
    finally:
        cleanup(base)


# --- KeyService -----------------------------------------------------------------------


def test_create_get_list_rotate_min_version_delete(vs: Stubs) -> None:
    k = vs.keys.CreateKey(keys_pb2.CreateKeyRequest(name="life/a", type=ED25519,
                                                    labels={"team": "ci"}))
    assert (k.name, k.type, k.primary_version, k.min_decryption_version) == \
        ("life/a", ED25519, 1, 1)
    assert dict(k.labels) == {"team": "ci"} and len(k.versions[0].public_key) == 32
    assert k.create_time.seconds > 1_600_000_000
    got = vs.keys.GetKey(keys_pb2.GetKeyRequest(name="life/a"))
    assert got == k
    for t in (X25519, AEAD, HMAC):
        vs.create(f"life/t{t}", t)
    rotated = vs.keys.RotateKey(keys_pb2.RotateKeyRequest(name="life/a"))
    assert rotated.primary_version == 2 and [v.version for v in rotated.versions] == [1, 2]
    rotated = vs.keys.RotateKey(keys_pb2.RotateKeyRequest(name="life/a"))
    m = vs.keys.SetMinDecryptionVersion(
        keys_pb2.SetMinDecryptionVersionRequest(name="life/a", version=2))
    assert m.min_decryption_version == 2
    d = vs.keys.DeleteKeyVersion(keys_pb2.DeleteKeyVersionRequest(name="life/a", version=1))
    assert [v.version for v in d.versions] == [2, 3]
    names = [k.name for k in vs.keys.ListKeys(keys_pb2.ListKeysRequest(prefix="life/")).keys]
    assert names == sorted(names) and set(names) == {"life/a", "life/t2", "life/t3", "life/t4"}
    vs.keys.DeleteKey(keys_pb2.DeleteKeyRequest(name="life/a"))
    assert code_of(vs.keys.GetKey, keys_pb2.GetKeyRequest(name="life/a"))[0] == C.NOT_FOUND


def test_list_keys_pages(vs: Stubs) -> None:
    for i in range(5):
        vs.create(f"page/{i}", HMAC)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        r = vs.keys.ListKeys(keys_pb2.ListKeysRequest(prefix="page/", page_size=2,
                                                      page_token=token))
        seen += [k.name for k in r.keys]
        pages += 1
        token = r.next_page_token
        if not token:
            break
    assert seen == [f"page/{i}" for i in range(5)] and pages == 3
    assert code_of(vs.keys.ListKeys, keys_pb2.ListKeysRequest(page_token="!!"))[0] == \
        C.INVALID_ARGUMENT


def test_public_key_in_every_format(vs: Stubs) -> None:
    k = vs.create("pub/ed", ED25519)
    raw = k.versions[0].public_key
    for fmt, check in (
        (keys_pb2.PUBLIC_KEY_FORMAT_UNSPECIFIED, lambda b: b == raw),
        (keys_pb2.PUBLIC_KEY_FORMAT_RAW, lambda b: b == raw),
        (keys_pb2.PUBLIC_KEY_FORMAT_PEM, lambda b: b.startswith(b"-----BEGIN PUBLIC KEY")),
        (keys_pb2.PUBLIC_KEY_FORMAT_OPENSSH, lambda b: b.startswith(b"ssh-ed25519 ")),
        (keys_pb2.PUBLIC_KEY_FORMAT_JWK, lambda b: json.loads(b)["crv"] == "Ed25519"),
    ):
        r = vs.keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(name="pub/ed", format=fmt))
        assert check(r.public_key), fmt
        assert r.version == 1 and r.type == ED25519
    vs.keys.RotateKey(keys_pb2.RotateKeyRequest(name="pub/ed"))
    old = vs.keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(name="pub/ed", version=1))
    assert old.public_key == raw and old.version == 1
    assert vs.keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(name="pub/ed")).version == 2


def test_wrapped_import_of_every_type(vs: Stubs) -> None:
    ipk = vs.keys.GetImportKey(keys_pb2.GetImportKeyRequest()).public_key
    assert len(ipk) == 32
    seed = os.urandom(32)
    k = vs.keys.ImportKey(keys_pb2.ImportKeyRequest(name="imp/ed", type=ED25519,
                                                    wrapped_key=wrap(ipk, seed)))
    from nacl.signing import SigningKey
    assert k.versions[0].public_key == bytes(SigningKey(seed).verify_key)
    mac_key = os.urandom(48)
    vs.keys.ImportKey(keys_pb2.ImportKeyRequest(name="imp/mac", type=HMAC,
                                                wrapped_key=wrap(ipk, mac_key)))
    tag = vs.crypto.Mac(crypto_pb2.MacRequest(key="imp/mac", message=b"hello")).mac
    assert tag[framing.HEADER_SIZE:] == hmac.new(mac_key, b"hello", hashlib.sha256).digest()
    x = PrivateKey.generate()
    k = vs.keys.ImportKey(keys_pb2.ImportKeyRequest(name="imp/x", type=X25519,
                                                    wrapped_key=wrap(ipk, bytes(x))))
    assert k.versions[0].public_key == bytes(x.public_key)
    vs.keys.ImportKey(keys_pb2.ImportKeyRequest(name="imp/aead", type=AEAD,
                                                wrapped_key=wrap(ipk, os.urandom(32))))
    # wrong length, and not sealed to the import key at all
    assert code_of(vs.keys.ImportKey, keys_pb2.ImportKeyRequest(
        name="imp/bad", type=ED25519, wrapped_key=wrap(ipk, b"short")))[:3:2] == \
        (C.INVALID_ARGUMENT, "InvalidImport")
    assert code_of(vs.keys.ImportKey, keys_pb2.ImportKeyRequest(
        name="imp/bad", type=ED25519, wrapped_key=os.urandom(80)))[0] == C.INVALID_ARGUMENT


# --- CryptoService ------------------------------------------------------------------------


def test_sign_verify(vs: Stubs) -> None:
    k = vs.create("c/ed", ED25519)
    r = vs.sign("c/ed", b"message")
    assert r.key_version == 1
    VerifyKey(k.versions[0].public_key).verify(b"message", r.signature[framing.HEADER_SIZE:])
    ok = vs.crypto.Verify(crypto_pb2.VerifyRequest(key="c/ed", message=b"message",
                                                   signature=r.signature))
    assert ok.valid and ok.key_version == 1
    bad = vs.crypto.Verify(crypto_pb2.VerifyRequest(key="c/ed", message=b"other",
                                                    signature=r.signature))
    assert not bad.valid


def test_encrypt_decrypt_and_sealed_box(vs: Stubs) -> None:
    vs.create("c/aead", AEAD)
    e = vs.crypto.Encrypt(crypto_pb2.EncryptRequest(key="c/aead", plaintext=b"pt",
                                                    associated_data=b"ad"))
    d = vs.crypto.Decrypt(crypto_pb2.DecryptRequest(key="c/aead", ciphertext=e.ciphertext,
                                                    associated_data=b"ad"))
    assert d.plaintext == b"pt" and d.key_version == 1
    code, _, name = code_of(vs.crypto.Decrypt, crypto_pb2.DecryptRequest(
        key="c/aead", ciphertext=e.ciphertext, associated_data=b"wrong"))
    assert (code, name) == (C.INVALID_ARGUMENT, "DecryptionFailed")
    k = vs.create("c/x", X25519)
    box = SealedBox(PublicKey(k.versions[0].public_key)).encrypt(b"to the vault")
    token = framing.frame(framing.Kind.SEALED_BOX, 1, box)
    d = vs.crypto.Decrypt(crypto_pb2.DecryptRequest(key="c/x", ciphertext=token))
    assert d.plaintext == b"to the vault"
    # the bare box (the most natural mistake) is told the header it lacks
    while box[:2] == framing.MAGIC:  # 1 in 65,536 ephemeral keys start so
        box = SealedBox(PublicKey(k.versions[0].public_key)).encrypt(b"to the vault")
    code, details, name = code_of(vs.crypto.Decrypt, crypto_pb2.DecryptRequest(
        key="c/x", ciphertext=box))
    assert (code, name) == (C.INVALID_ARGUMENT, "MalformedCiphertext")
    assert "7-byte header b'SVB'" in details and "XChaCha20" not in details


def test_mac_verify_mac(vs: Stubs) -> None:
    vs.create("c/mac", HMAC)
    m = vs.crypto.Mac(crypto_pb2.MacRequest(key="c/mac", message=b"x"))
    assert vs.crypto.VerifyMac(crypto_pb2.VerifyMacRequest(key="c/mac", message=b"x",
                                                           mac=m.mac)).valid
    assert not vs.crypto.VerifyMac(crypto_pb2.VerifyMacRequest(key="c/mac", message=b"y",
                                                               mac=m.mac)).valid


def test_verify_and_verify_mac_refuse_a_payload_of_the_wrong_length(vs: Stubs) -> None:
    """The .proto's INVALID_ARGUMENT for 'not a signature token': a correct
    header on 0, 33, 63 or 65 bytes was answered valid=false."""
    vs.create("w/ed", ED25519)
    vs.create("w/mac", HMAC)
    for n in (0, 33, 63, 65):
        token = framing.frame(framing.Kind.SIGNATURE, 1, bytes(n))
        code, details, name = code_of(vs.crypto.Verify, crypto_pb2.VerifyRequest(
            key="w/ed", message=b"m", signature=token))
        assert (code, name) == (C.INVALID_ARGUMENT, "MalformedCiphertext"), (n, details)
        assert f"64 bytes after its 7-byte header, got {n}" in details
    for n in (0, 31, 33, 64):
        token = framing.frame(framing.Kind.MAC, 1, bytes(n))
        code, details, name = code_of(vs.crypto.VerifyMac, crypto_pb2.VerifyMacRequest(
            key="w/mac", message=b"m", mac=token))
        assert (code, name) == (C.INVALID_ARGUMENT, "MalformedCiphertext"), (n, details)
        assert f"32 bytes after its 7-byte header, got {n}" in details
    # in a batch too: the operation's error, the batch goes on
    r = vs.crypto.Batch(crypto_pb2.BatchRequest(operations=[crypto_pb2.Operation(
        id=1, verify=crypto_pb2.VerifyRequest(
            key="w/ed", message=b"m", signature=framing.frame(framing.Kind.SIGNATURE, 1, b"")))]))
    assert (r.results[0].error.code, r.results[0].error.error) == (3, "MalformedCiphertext")


def test_a_version_below_the_minimum_is_failed_precondition(vs: Stubs) -> None:
    """The version exists (GetKey lists it) but is retired for decrypt and
    verify: FAILED_PRECONDITION (VersionBelowMinimum), not NOT_FOUND."""
    vs.create("min/ed", ED25519)
    vs.create("min/aead", AEAD)
    vs.create("min/mac", HMAC)
    old = {"sig": vs.sign("min/ed").signature,
           "ct": vs.crypto.Encrypt(crypto_pb2.EncryptRequest(key="min/aead", plaintext=b"p"))
           .ciphertext,
           "mac": vs.crypto.Mac(crypto_pb2.MacRequest(key="min/mac", message=b"m")).mac}
    for name in ("min/ed", "min/aead", "min/mac"):
        vs.keys.RotateKey(keys_pb2.RotateKeyRequest(name=name))
        vs.keys.SetMinDecryptionVersion(
            keys_pb2.SetMinDecryptionVersionRequest(name=name, version=2))
    for call, request in (
            (vs.crypto.Verify, crypto_pb2.VerifyRequest(key="min/ed", message=b"m",
                                                        signature=old["sig"])),
            (vs.crypto.Decrypt, crypto_pb2.DecryptRequest(key="min/aead", ciphertext=old["ct"])),
            (vs.crypto.VerifyMac, crypto_pb2.VerifyMacRequest(key="min/mac", message=b"m",
                                                              mac=old["mac"]))):
        code, details, name = code_of(call, request)
        assert (code, name) == (C.FAILED_PRECONDITION, "VersionBelowMinimum"), details
        assert "version 1 is below the minimum decryption version 2" in details


def _ops() -> list[crypto_pb2.Operation]:
    return [
        crypto_pb2.Operation(id=10, sign=crypto_pb2.SignRequest(key="b/ed", message=b"a")),
        crypto_pb2.Operation(id=11, encrypt=crypto_pb2.EncryptRequest(key="b/aead",
                                                                      plaintext=b"p")),
        crypto_pb2.Operation(id=12, mac=crypto_pb2.MacRequest(key="b/mac", message=b"m")),
        crypto_pb2.Operation(id=13, sign=crypto_pb2.SignRequest(key="b/missing", message=b"")),
        crypto_pb2.Operation(id=14, mac=crypto_pb2.MacRequest(key="b/ed", message=b"m")),
        crypto_pb2.Operation(id=15),
    ]


def _check_results(vs: Stubs, results: list[Any]) -> None:
    assert [r.id for r in results] == [10, 11, 12, 13, 14, 15]
    kinds = [r.WhichOneof("result") for r in results]
    assert kinds == ["sign", "encrypt", "mac", "error", "error", "error"]
    assert (results[3].error.code, results[3].error.error) == (5, "KeyNotFound")  # NOT_FOUND
    assert (results[4].error.code, results[4].error.error) == (3, "WrongKeyType")
    assert results[5].error.code == 3
    # the batch's results are real: they verify and decrypt through the unary calls
    v = vs.crypto.Verify(crypto_pb2.VerifyRequest(key="b/ed", message=b"a",
                                                  signature=results[0].sign.signature))
    assert v.valid
    d = vs.crypto.Decrypt(crypto_pb2.DecryptRequest(key="b/aead",
                                                    ciphertext=results[1].encrypt.ciphertext))
    assert d.plaintext == b"p"


@pytest.fixture(scope="module")
def batch_keys(vs: Stubs) -> None:
    vs.create("b/ed", ED25519)
    vs.create("b/aead", AEAD)
    vs.create("b/mac", HMAC)


def test_batch(vs: Stubs, batch_keys: None) -> None:
    r = vs.crypto.Batch(crypto_pb2.BatchRequest(operations=_ops()))
    _check_results(vs, list(r.results))
    assert vs.crypto.Batch(crypto_pb2.BatchRequest()).results == []


def test_batch_beyond_the_limit_is_resource_exhausted(vs: Stubs, batch_keys: None) -> None:
    op = crypto_pb2.Operation(sign=crypto_pb2.SignRequest(key="b/ed"))
    code, details, name = code_of(vs.crypto.Batch,
                                  crypto_pb2.BatchRequest(operations=[op] * 10_001))
    assert (code, name) == (C.RESOURCE_EXHAUSTED, "RequestTooLarge")
    assert "10000" in details


def test_stream(vs: Stubs, batch_keys: None) -> None:
    _check_results(vs, list(vs.crypto.Stream(iter(_ops()))))


def test_stream_interleaves_requests_and_results(vs: Stubs, batch_keys: None) -> None:
    q: queue.Queue[Any] = queue.Queue()
    results = vs.crypto.Stream(iter(q.get, None))
    for i in range(20):
        q.put(crypto_pb2.Operation(id=i, sign=crypto_pb2.SignRequest(key="b/ed",
                                                                      message=b"%d" % i)))
        assert next(results).id == i  # answered before the next request is sent
    q.put(None)
    assert list(results) == []


# --- StatsService ------------------------------------------------------------------------


@pytest.mark.memfd_secret
def test_get_stats(vs: Stubs) -> None:
    vs.create("s/ed", ED25519)
    s = vs.get_stats()
    assert (s.backend, s.protection) == ("memfd_secret", "secretmem")
    assert s.pages_mapped >= 1 and s.regions >= 1 and s.key_bytes >= 64
    assert s.bytes_locked == s.pages_mapped * 4096
    assert s.keys_by_type["ed25519"] >= 1
    assert s.hibernation_inhibited
    assert s.direct_map.source == "kernel"
    assert {c.size for c in s.size_classes} >= {32, 64}
    ops = {(o.operation, o.result): o.count for o in s.operations}
    assert ops[("create_key", "ok")] >= 1


def test_watch_stats_streams_until_cancelled(vs: Stubs) -> None:
    watch = vs.stats.WatchStats(stats_pb2.WatchStatsRequest(interval_seconds=0.1))
    t0 = time.monotonic()
    first, second = next(watch), next(watch)
    assert first.backend == second.backend == SERVER_BACKEND
    assert time.monotonic() - t0 >= 0.09
    watch.cancel()
    code, _, name = code_of(lambda r: list(vs.stats.WatchStats(r)),
                            stats_pb2.WatchStatsRequest(interval_seconds=-1))
    assert (code, name) == (C.INVALID_ARGUMENT, "InvalidArgument")


# --- every error code ---------------------------------------------------------------------


def test_error_codes_and_names(vs: Stubs) -> None:
    vs.create("e/ed", ED25519)
    vs.create("e/aead", AEAD)
    sig = vs.sign("e/ed").signature
    cases: list[tuple[Any, Any, C, str]] = [
        (vs.crypto.Sign, crypto_pb2.SignRequest(key="e/none"), C.NOT_FOUND, "KeyNotFound"),
        (vs.keys.GetPublicKey, keys_pb2.GetPublicKeyRequest(name="e/ed", version=9),
         C.NOT_FOUND, "VersionNotFound"),
        (vs.crypto.Verify, crypto_pb2.VerifyRequest(
            key="e/ed", signature=sig[:3] + b"\0\0\0\x09" + sig[7:]),
         C.NOT_FOUND, "VersionNotFound"),
        (vs.keys.CreateKey, keys_pb2.CreateKeyRequest(name="e/ed", type=ED25519),
         C.ALREADY_EXISTS, "KeyExists"),
        (vs.keys.CreateKey, keys_pb2.CreateKeyRequest(name="../x", type=ED25519),
         C.INVALID_ARGUMENT, "InvalidKeyName"),
        (vs.keys.CreateKey, keys_pb2.CreateKeyRequest(name="e/u"),
         C.INVALID_ARGUMENT, "InvalidArgument"),
        (vs.keys.CreateKey, keys_pb2.CreateKeyRequest(name="e/u", type=77),
         C.INVALID_ARGUMENT, "InvalidArgument"),
        (vs.crypto.Sign, crypto_pb2.SignRequest(key="e/aead"),
         C.INVALID_ARGUMENT, "WrongKeyType"),
        (vs.crypto.Verify, crypto_pb2.VerifyRequest(key="e/ed", signature=b"short"),
         C.INVALID_ARGUMENT, "MalformedCiphertext"),
        (vs.crypto.Decrypt, crypto_pb2.DecryptRequest(key="e/aead", ciphertext=sig),
         C.INVALID_ARGUMENT, "MalformedCiphertext"),
        (vs.keys.GetPublicKey, keys_pb2.GetPublicKeyRequest(name="e/aead"),
         C.INVALID_ARGUMENT, "WrongKeyType"),
        (vs.keys.GetPublicKey, keys_pb2.GetPublicKeyRequest(name="e/ed", format=99),
         C.INVALID_ARGUMENT, "InvalidArgument"),
        (vs.keys.DeleteKeyVersion, keys_pb2.DeleteKeyVersionRequest(name="e/ed", version=1),
         C.FAILED_PRECONDITION, "FailedPrecondition"),
        (vs.keys.SetMinDecryptionVersion,
         keys_pb2.SetMinDecryptionVersionRequest(name="e/ed", version=5),
         C.INVALID_ARGUMENT, "InvalidArgument"),
    ]
    for call, request, want, name in cases:
        code, details, error = code_of(call, request)
        assert (code, error) == (want, name), (request, details)
        assert details and "Traceback" not in details


def test_oversized_message_is_resource_exhausted(vs: Stubs) -> None:
    code, details, _ = code_of(vs.crypto.Sign, crypto_pb2.SignRequest(
        key="e/ed", message=b"x" * (5 << 20)))
    assert code == C.RESOURCE_EXHAUSTED and "larger than max" in details


def test_deadline_is_honoured(vs: Stubs, batch_keys: None) -> None:
    op = crypto_pb2.Operation(sign=crypto_pb2.SignRequest(key="b/ed", message=b"x" * 1000))
    code, _, _ = code_of(vs.crypto.Batch, crypto_pb2.BatchRequest(operations=[op] * 10_000),
                         timeout=0.05)
    assert code == C.DEADLINE_EXCEEDED
    assert vs.sign("b/ed").key_version == 1


def test_shutting_down_is_unavailable(server: VaultServer, vs: Stubs) -> None:
    server.edge.draining.set()
    try:
        code, details, name = code_of(vs.sign, "b/ed")
    finally:
        server.edge.draining.clear()
    assert (code, name) == (C.UNAVAILABLE, "ShuttingDown") and "shutting down" in details


# --- health, reflection ---------------------------------------------------------------------


def test_health(vs: Stubs) -> None:
    h = health_pb2_grpc.HealthStub(vs.channel)
    for service in ("", "secretvault.v1.KeyService", "secretvault.v1.CryptoService",
                    "secretvault.v1.StatsService"):
        assert h.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    assert code_of(h.Check, health_pb2.HealthCheckRequest(service="nope"))[0] == C.NOT_FOUND


def test_reflection(vs: Stubs) -> None:
    db = ProtoReflectionDescriptorDatabase(vs.channel)
    services = set(db.get_services())
    assert {"secretvault.v1.KeyService", "secretvault.v1.CryptoService",
            "secretvault.v1.StatsService", "grpc.health.v1.Health"} <= services
    from google.protobuf.descriptor_pool import DescriptorPool
    pool = DescriptorPool(db)
    sign = pool.FindServiceByName("secretvault.v1.CryptoService").FindMethodByName("Sign")
    assert sign.input_type.full_name == "secretvault.v1.SignRequest"


# --- metrics and audit ---------------------------------------------------------------------


def _scrape(server: VaultServer) -> dict[str, float]:
    assert server.metrics_address is not None
    host, port = server.metrics_address
    assert host == "127.0.0.1"
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_match_the_stats_record(server: VaultServer, vs: Stubs) -> None:
    vs.create("m/ed", ED25519)
    for _ in range(3):
        vs.sign("m/ed")
    s = vs.get_stats()
    m = _scrape(server)
    assert m["secretvault_secret_memory_pages_mapped"] == s.pages_mapped
    assert m["secretvault_secret_memory_key_bytes"] == s.key_bytes
    assert m['secretvault_keys{type="ed25519"}'] == s.keys_by_type["ed25519"]
    backend_info = f'backend="{SERVER_BACKEND}",protection="{SERVER_PROTECTION}"'
    assert m[f"secretvault_backend_info{{{backend_info}}}"] == 1
    ops = {(o.operation, o.result): o.count for o in s.operations}
    assert m['secretvault_operations_total{operation="sign",result="ok"}'] >= \
        ops[("sign", "ok")] >= 3
    assert m['secretvault_operation_duration_seconds_count{operation="sign"}'] >= 3
    splits = f'level="2",source="{SERVER_DIRECT_MAP_SOURCE}"'
    assert f"secretvault_direct_map_splits_total{{{splits}}}" in m


def test_audit_lines_carry_no_secret_or_message(server: VaultServer, vs: Stubs) -> None:
    vs.create("a/mac", HMAC)
    secret_message = b"MESSAGE-CONTENT-MUST-NOT-BE-AUDITED"
    tag = vs.crypto.Mac(crypto_pb2.MacRequest(key="a/mac", message=secret_message)).mac
    code_of(vs.sign, "a/none", secret_message)
    with open(server.audit.path or "", "rb") as f:
        raw = f.read()
    assert secret_message not in raw and tag.hex().encode() not in raw
    lines = audit_lines(server)
    fields = {"time", "identity", "listener", "operation", "key", "version", "result"}
    # a batch refused whole is one line with its operation counts (names, no keys)
    assert all(set(line) == fields or (set(line) == fields | {"batch"}
                                       and set(line["batch"]) <= {"operations", "by_operation"})
               for line in lines)
    mine = [line for line in lines if line["key"] in ("a/mac", "a/none")]
    # a change is audited as an attempt before it is made, then with its result
    assert [(x["operation"], x["key"], x["version"], x["result"], x["identity"])
            for x in mine] == [("create_key", "a/mac", None, "attempt", "owner"),
                               ("create_key", "a/mac", 1, "ok", "owner"),
                               ("mac", "a/mac", 1, "ok", "owner"),
                               ("sign", "a/none", None, "NOT_FOUND", "owner")]


def test_batch_operations_are_audited_one_by_one(server: VaultServer, vs: Stubs,
                                                 batch_keys: None) -> None:
    before = len(audit_lines(server))
    vs.crypto.Batch(crypto_pb2.BatchRequest(operations=_ops()))
    new = audit_lines(server)[before:]
    assert [(x["operation"], x["key"], x["result"]) for x in new] == [
        ("sign", "b/ed", "ok"), ("encrypt", "b/aead", "ok"), ("mac", "b/mac", "ok"),
        ("sign", "b/missing", "NOT_FOUND"), ("mac", "b/ed", "INVALID_ARGUMENT"),
        ("invalid", None, "INVALID_ARGUMENT")]


@pytest.mark.parametrize("fail_open", [False, True])
def test_audit_failure_fails_closed_unless_configured_open(fail_open: bool) -> None:
    base = short_dir()
    try:
        # /dev/full: every write(2) is ENOSPC, like a full disk
        with start(base, audit_log="/dev/full", audit_fail_open=fail_open) as s:
            v = stubs(s.config.vault.socket)
            if fail_open:
                assert v.create("k").name == "k"
                assert v.sign("k").key_version == 1
            else:
                code, details, name = code_of(v.get_stats)
                assert (code, name) == (C.UNAVAILABLE, "AuditUnavailable")
                assert "audit log" in details
                assert code_of(v.sign, "k")[0] == C.UNAVAILABLE
    finally:
        cleanup(base)


# --- more listeners, TLS, mutual TLS ----------------------------------------------------


# root can give the socket to any group; others only to their own
GROUP = os.getgid() + 1 if os.geteuid() == 0 else os.getgid()

POLICY = """
[identities.signer]
tls = ["spiffe://test/signer", "cn-signer"]

[[identities.signer.sockets]]
path = "{base}/signer/vault.sock"
group = {gid}
mode = "0660"

[[identities.signer.allow]]
operations = ["sign", "verify", "get_public_key"]
keys = ["ci/*"]

[[anonymous.allow]]
operations = ["verify"]
keys = ["*"]
"""


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[VaultServer, Pki, str]]:
    base = short_dir()
    pki = Pki(base)
    cert, key = pki.issue("server", cn="localhost", server=True)
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write(POLICY.format(base=base, gid=GROUP))
    try:
        with start(base, policy_file=policy, tcp="127.0.0.1:0", tls_cert=cert, tls_key=key,
                   client_ca=pki.ca_path) as s:
            owner = stubs(s.config.vault.socket)
            owner.create("ci/ed", ED25519)
            owner.create("prod/ed", ED25519)
            yield s, pki, base
    finally:
        cleanup(base)


def test_group_listener_socket_mode_owner_and_group(
        tls_server: tuple[VaultServer, Pki, str]) -> None:
    _, _, base = tls_server
    st = os.lstat(f"{base}/signer/vault.sock")
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == GROUP
    dst = os.lstat(f"{base}/signer")
    assert stat.S_IMODE(dst.st_mode) == 0o710 and dst.st_gid == GROUP
    signer = stubs(f"{base}/signer/vault.sock")
    assert signer.sign("ci/ed").key_version == 1
    code, details, name = code_of(signer.sign, "prod/ed")
    assert (code, name) == (C.PERMISSION_DENIED, "PermissionDenied")
    assert "'signer' may not sign on key 'prod/ed'" in details


@pytest.mark.parametrize("uri,cn,identity", [
    ("spiffe://test/signer", "whatever", "signer"),  # SAN URI wins over CN
    (None, "cn-signer", "signer"),  # no URI: the CN
    ("spiffe://test/other", "cn-signer", "tls:spiffe://test/other"),  # unknown: no grants
])
def test_mutual_tls_identity_from_the_certificate(
        tls_server: tuple[VaultServer, Pki, str], uri: str | None, cn: str,
        identity: str) -> None:
    s, pki, _ = tls_server
    assert s.tcp_port
    client = pki.issue(f"client-{abs(hash((uri, cn)))}", cn=cn, uri=uri)
    v = Stubs(tls_channel(s.tcp_port, pki, client))
    if identity == "signer":
        assert v.sign("ci/ed").key_version == 1
        assert code_of(v.sign, "prod/ed")[0] == C.PERMISSION_DENIED
    else:
        code, details, _ = code_of(v.sign, "ci/ed")
        assert code == C.PERMISSION_DENIED and repr(identity) in details
    # a name claimed in metadata changes nothing
    code, _, _ = code_of(v.crypto.Sign, crypto_pb2.SignRequest(key="prod/ed"),
                         metadata=(("identity", "owner"), ("x-identity", "owner")))
    assert code == C.PERMISSION_DENIED


def test_mutual_tls_refuses_a_certificate_from_another_ca(
        tls_server: tuple[VaultServer, Pki, str]) -> None:
    s, pki, base = tls_server
    assert s.tcp_port
    other = Pki(os.path.join(base, "signer"))  # any directory of ours
    client = pki.issue("rogue", cn="cn-signer", uri="spiffe://test/signer",
                       ca=(other.ca_key, other.ca_cert))
    v = Stubs(tls_channel(s.tcp_port, pki, client))
    assert code_of(v.crypto.Sign, crypto_pb2.SignRequest(key="ci/ed"),
                   timeout=5)[0] == C.UNAVAILABLE


def test_tls_without_client_certificate_is_refused_when_mutual(
        tls_server: tuple[VaultServer, Pki, str]) -> None:
    s, pki, _ = tls_server
    assert s.tcp_port
    v = Stubs(tls_channel(s.tcp_port, pki, None))
    assert code_of(v.crypto.Sign, crypto_pb2.SignRequest(key="ci/ed"),
                   timeout=5)[0] == C.UNAVAILABLE


def test_server_only_tls_caller_is_anonymous() -> None:
    base = short_dir()
    pki = Pki(base)
    cert, key = pki.issue("server", cn="localhost", server=True)
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write('[[anonymous.allow]]\n'
                'operations = ["verify"]\nkeys = ["*"]\n')
    try:
        with start(base, policy_file=policy, tcp="127.0.0.1:0", tls_cert=cert,
                   tls_key=key) as s:
            owner = stubs(s.config.vault.socket)
            owner.create("k", ED25519)
            sig = owner.sign("k").signature
            assert s.tcp_port
            v = Stubs(tls_channel(s.tcp_port, pki, None))
            assert v.crypto.Verify(crypto_pb2.VerifyRequest(key="k", message=b"m",
                                                            signature=sig)).valid
            code, details, _ = code_of(v.sign, "k")
            assert code == C.PERMISSION_DENIED and "'anonymous'" in details
    finally:
        cleanup(base)


def test_tcp_without_tls_is_refused() -> None:
    from secretvault.api.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="TCP needs TLS"):
        start("/nonexistent/never-created", tcp="127.0.0.1:0")


def test_concurrent_calls_from_many_threads(vs: Stubs, batch_keys: None) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                r = vs.sign("b/ed", b"t")
                assert vs.crypto.Verify(crypto_pb2.VerifyRequest(
                    key="b/ed", message=b"t", signature=r.signature)).valid
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_server_bug_is_internal_without_detail(server: VaultServer, vs: Stubs,
                                                 batch_keys: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("internal detail /var/lib/secretvault/x")

    monkeypatch.setattr(server.vault.keyring, "sign", broken)
    # a batch's run of signs with one key goes through sign_each
    monkeypatch.setattr(server.vault.keyring, "sign_each", broken)
    code, details, name = code_of(vs.sign, "b/ed")
    assert (code, name) == (C.INTERNAL, "VaultError")
    assert "internal detail" not in details and "reference #" in details
    r = vs.crypto.Batch(crypto_pb2.BatchRequest(operations=_ops()[:1]))
    assert r.results[0].error.code == 13 and "internal detail" not in r.results[0].error.message
    run = [crypto_pb2.Operation(id=i, sign=crypto_pb2.SignRequest(key="b/ed", message=b"m"))
           for i in range(3)]  # one run of signs with one key
    r = vs.crypto.Batch(crypto_pb2.BatchRequest(operations=run))
    assert [x.id for x in r.results] == [0, 1, 2]
    assert all(x.error.code == 13 and "internal detail" not in x.error.message
               for x in r.results)
    monkeypatch.undo()
    assert vs.sign("b/ed").key_version == 1


def test_a_client_cancelling_is_not_a_server_error(server: VaultServer, vs: Stubs,
                                                   batch_keys: None,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    before = len(audit_lines(server))
    for _ in range(5):
        q: queue.Queue[Any] = queue.Queue()
        it = vs.crypto.Stream(iter(q.get, None))
        q.put(crypto_pb2.Operation(id=1, sign=crypto_pb2.SignRequest(key="b/ed")))
        assert next(it).id == 1
        it.cancel()
        watch = vs.stats.WatchStats(stats_pb2.WatchStatsRequest(interval_seconds=0.1))
        next(watch)
        watch.cancel()
    time.sleep(0.5)
    assert "internal error" not in caplog.text
    assert all(line["result"] != "INTERNAL" for line in audit_lines(server)[before:])


def test_the_feed_thread_starts_after_the_binding_capabilities_go() -> None:
    # threads inherit the capabilities of the thread that starts them: a feed thread
    # started while `serve` still held CAP_CHOWN / CAP_NET_BIND_SERVICE for binding
    # kept them for the life of the process (found in review)
    base = short_dir()
    seen: list[bool] = []
    threads_before = {t.ident for t in threading.enumerate()}
    try:
        server = create_server(
            ServerConfig(vault=vault_config(base), grace_seconds=1.0,
                         audit_log=os.path.join(base, "audit.log")),
            after_bind=lambda: seen.append(any(
                t.name == "secretvault-feed" and t.ident not in threads_before
                for t in threading.enumerate())))
        try:
            assert seen == [False]
            assert any(t.name == "secretvault-feed" for t in threading.enumerate())
        finally:
            server.stop()
    finally:
        cleanup(base)
