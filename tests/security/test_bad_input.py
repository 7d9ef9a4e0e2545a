"""Garbage in: the server stays up, blames the client, and keeps serving.

Thousands of malformed, truncated, bit-flipped, spliced, oversized and random
messages go to every method of the three services (through grpc's generic
``unary_unary``/``unary_stream``/``stream_stream`` with raw-bytes
serializers, so nothing on the client side validates them), plus raw bytes
that are not HTTP/2 at all straight to the socket.  No answer may be
INTERNAL or UNKNOWN (those would mean the server blamed itself for the
client's bytes) or DEADLINE_EXCEEDED (a call the server left hanging), the
server process must still be running, and a valid call must work after
every round.  A second round comes from an identity the policy grants
nothing: garbage, and more idle streams than the server has threads; every
answer must be a prompt refusal, and the owner must still be served.

The seed is printed; set ``BAD_INPUT_SEED`` to replay a run.
"""

from __future__ import annotations

import collections
import math
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message as _message

from secretvault.api import framing
from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2, stats_pb2
from tests.integration._support import (
    AEAD,
    ED25519,
    HMAC,
    X25519,
    Child,
    cleanup,
    short_dir,
    stubs,
    wrap,
)

pytestmark = pytest.mark.memfd_secret

ROUNDS = int(os.environ.get("BAD_INPUT_ROUNDS", "160"))  # payloads per method
#: answers that blame the server (INTERNAL, UNKNOWN) or show it left a call
#: hanging until the client's deadline (every call here has one)
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
#: the handler threads of the child server's listener (ServerConfig.workers)
WORKERS = 64
PAYLOAD_LIMIT = 4 << 20  # the server's default max_message_bytes


def seeds(ipk: bytes, sig: bytes, ct: bytes, mac: bytes) -> dict[str, list[_message.Message]]:
    """Valid (or nearly valid) requests per method, for mutation."""
    big = "n" * 129
    return {
        "/secretvault.v1.KeyService/CreateKey": [
            keys_pb2.CreateKeyRequest(name="bi/new", type=ED25519, labels={"a": "b"}),
            keys_pb2.CreateKeyRequest(name=big, type=HMAC),
            keys_pb2.CreateKeyRequest(name="bi/x", type=99),
            keys_pb2.CreateKeyRequest(name="bi/y", labels={str(i): "v" for i in range(40)}),
            keys_pb2.CreateKeyRequest(name="bi/z", type=AEAD, labels={"": "x" * 300}),
        ],
        "/secretvault.v1.KeyService/GetImportKey": [keys_pb2.GetImportKeyRequest()],
        "/secretvault.v1.KeyService/ImportKey": [
            keys_pb2.ImportKeyRequest(name="bi/imp", type=ED25519,
                                      wrapped_key=wrap(ipk, os.urandom(32))),
            keys_pb2.ImportKeyRequest(name="bi/imp2", type=HMAC,
                                      wrapped_key=wrap(ipk, os.urandom(200))),
            keys_pb2.ImportKeyRequest(name="bi/imp3", type=X25519, wrapped_key=b"\0" * 80),
            keys_pb2.ImportKeyRequest(name="bi/imp4", type=AEAD, wrapped_key=b""),
        ],
        "/secretvault.v1.KeyService/GetKey": [keys_pb2.GetKeyRequest(name="bi/ed"),
                                              keys_pb2.GetKeyRequest(name="\u00e9/../x")],
        "/secretvault.v1.KeyService/GetPublicKey": [
            keys_pb2.GetPublicKeyRequest(name="bi/ed", version=2**32 - 1, format=4),
            keys_pb2.GetPublicKeyRequest(name="bi/x25519", format=3),
            keys_pb2.GetPublicKeyRequest(name="bi/aead", format=77),
        ],
        "/secretvault.v1.KeyService/ListKeys": [
            keys_pb2.ListKeysRequest(prefix="bi/", page_size=2**32 - 1, page_token="YmkvZWQ="),
            keys_pb2.ListKeysRequest(page_token="\u2603" * 10, page_size=1),
        ],
        "/secretvault.v1.KeyService/RotateKey": [keys_pb2.RotateKeyRequest(name="bi/rot")],
        "/secretvault.v1.KeyService/SetMinDecryptionVersion": [
            keys_pb2.SetMinDecryptionVersionRequest(name="bi/rot", version=2**32 - 1),
            keys_pb2.SetMinDecryptionVersionRequest(name="bi/rot", version=0),
        ],
        "/secretvault.v1.KeyService/DeleteKeyVersion": [
            keys_pb2.DeleteKeyVersionRequest(name="bi/rot", version=1),
            keys_pb2.DeleteKeyVersionRequest(name="bi/rot", version=2**32 - 1),
        ],
        "/secretvault.v1.KeyService/DeleteKey": [keys_pb2.DeleteKeyRequest(name="bi/gone"),
                                                 keys_pb2.DeleteKeyRequest(name="")],
        "/secretvault.v1.CryptoService/Sign": [
            crypto_pb2.SignRequest(key="bi/ed", message=os.urandom(100)),
            crypto_pb2.SignRequest(key="bi/aead", message=b""),
        ],
        "/secretvault.v1.CryptoService/Verify": [
            crypto_pb2.VerifyRequest(key="bi/ed", message=b"m", signature=sig),
            crypto_pb2.VerifyRequest(key="bi/ed", message=b"m", signature=sig[:7] + b"x"),
            crypto_pb2.VerifyRequest(key="bi/ed", signature=framing.frame(
                framing.Kind.SIGNATURE, 2**32 - 1, os.urandom(64))),
        ],
        "/secretvault.v1.CryptoService/Encrypt": [
            crypto_pb2.EncryptRequest(key="bi/aead", plaintext=os.urandom(64),
                                      associated_data=b"ad"),
        ],
        "/secretvault.v1.CryptoService/Decrypt": [
            crypto_pb2.DecryptRequest(key="bi/aead", ciphertext=ct),
            crypto_pb2.DecryptRequest(key="bi/x25519", ciphertext=framing.frame(
                framing.Kind.SEALED_BOX, 1, os.urandom(20))),
            crypto_pb2.DecryptRequest(key="bi/x25519", ciphertext=framing.frame(
                framing.Kind.SEALED_BOX, 1, os.urandom(60)), associated_data=b"x"),
            crypto_pb2.DecryptRequest(key="bi/aead", ciphertext=ct[:20]),
        ],
        "/secretvault.v1.CryptoService/Mac": [crypto_pb2.MacRequest(key="bi/mac",
                                                                    message=b"m")],
        "/secretvault.v1.CryptoService/VerifyMac": [
            crypto_pb2.VerifyMacRequest(key="bi/mac", message=b"m", mac=mac),
            crypto_pb2.VerifyMacRequest(key="bi/mac", message=b"m", mac=mac[:-1]),
        ],
        "/secretvault.v1.CryptoService/Batch": [
            crypto_pb2.BatchRequest(operations=[
                crypto_pb2.Operation(id=1, sign=crypto_pb2.SignRequest(key="bi/ed")),
                crypto_pb2.Operation(id=2, decrypt=crypto_pb2.DecryptRequest(
                    key="bi/aead", ciphertext=ct)),
                crypto_pb2.Operation(id=3, verify_mac=crypto_pb2.VerifyMacRequest(
                    key="bi/mac", mac=mac)),
                crypto_pb2.Operation(id=4),
            ]),
        ],
        "/secretvault.v1.StatsService/GetStats": [stats_pb2.GetStatsRequest()],
    }


STREAM = "/secretvault.v1.CryptoService/Stream"
WATCH = "/secretvault.v1.StatsService/WatchStats"


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    kind = rng.randrange(9)
    if kind == 0 or not data:
        return rng.randbytes(rng.randrange(0, 2048))
    if kind == 1:  # truncated
        return data[: rng.randrange(len(data))]
    if kind == 2:  # bit flips
        b = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 3:  # spliced with another method's request
        other = rng.choice(pool)
        return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
    if kind == 4:  # random bytes inserted
        i = rng.randrange(len(data) + 1)
        return data[:i] + rng.randbytes(rng.randrange(1, 64)) + data[i:]
    if kind == 5:  # a field with a wire type that does not match, or a huge length
        tag = (rng.randrange(1, 20) << 3) | rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
        return data + bytes([tag]) + b"\xff\xff\xff\xff\x0f" + rng.randbytes(8)
    if kind == 6:  # invalid UTF-8 in the first string field
        return b"\x0a\x04\xff\xfe\xc0\x80" + data
    if kind == 7:  # deep nesting of length-delimited fields
        out = data
        for _ in range(rng.randrange(1, 200)):
            out = b"\x12" + _varint(len(out)) + out
        return out
    return data * rng.randrange(2, 50)  # repeated fields, last one wins


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


NOBODY_POLICY = """
[identities.nobody]
[[identities.nobody.sockets]]
path = "{base}/nobody/n.sock"
"""


@pytest.fixture(scope="module")
def child() -> Iterator[Child]:
    base = short_dir()
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write(NOBODY_POLICY.format(base=base))
    c = Child(base, ["--audit-log", os.path.join(base, "audit.log"), "--policy", policy])
    try:
        c.wait_ready()
        v = stubs(c.socket)
        for name, t in (("bi/ed", ED25519), ("bi/aead", AEAD), ("bi/mac", HMAC),
                        ("bi/x25519", X25519), ("bi/rot", HMAC), ("canary", ED25519)):
            v.create(name, t)
        yield c
    finally:
        c.close()
        cleanup(base)


def alive(child: Child) -> None:
    assert child.proc.poll() is None, f"the server died: {child.stderr()[-2000:]}"
    v = stubs(child.socket)
    sig = v.sign("canary", b"still here").signature
    assert v.crypto.Verify(crypto_pb2.VerifyRequest(key="canary", message=b"still here",
                                                    signature=sig)).valid


def _identity(b: bytes) -> bytes:
    return b


def test_garbage_to_every_method(child: Child) -> None:
    seed = int(os.environ.get("BAD_INPUT_SEED", random.randrange(2**32)))
    print(f"BAD_INPUT_SEED={seed}")
    rng = random.Random(seed)
    v = stubs(child.socket)
    ipk = v.keys.GetImportKey(keys_pb2.GetImportKeyRequest()).public_key
    sig = v.sign("bi/ed").signature
    ct = v.crypto.Encrypt(crypto_pb2.EncryptRequest(key="bi/aead", plaintext=b"p")).ciphertext
    mac = v.crypto.Mac(crypto_pb2.MacRequest(key="bi/mac", message=b"m")).mac
    table = seeds(ipk, sig, ct, mac)
    pool = [m.SerializeToString() for ms in table.values() for m in ms]
    channel = grpc.insecure_channel(f"unix:{child.socket}")
    codes: collections.Counter[str] = collections.Counter()
    sent = 0
    bad: list[str] = []

    def check(method: str, payload: bytes, call: Callable[[], Any]) -> None:
        nonlocal sent
        sent += 1
        try:
            call()
            codes["OK"] += 1
        except grpc.RpcError as e:
            code = e.code()
            codes[code.name] += 1
            if code in NEVER:
                bad.append(f"{method} {payload[:40].hex()}: {code.name} {e.details()}")

    for method, messages in table.items():
        call = channel.unary_unary(method, request_serializer=_identity,
                                   response_deserializer=_identity)
        raw = [m.SerializeToString() for m in messages]
        for i in range(ROUNDS):
            payload = mutate(rng, rng.choice(raw), pool) if i else rng.choice(raw)
            check(method, payload, lambda p=payload: call(p, timeout=10))
        alive(child)

    # the server-streaming watch: one answer, then cancel
    watch = channel.unary_stream(WATCH, request_serializer=_identity,
                                 response_deserializer=_identity)
    base = stats_pb2.WatchStatsRequest(interval_seconds=0.1).SerializeToString()
    specials = [struct.pack("<Bd", 0x09, x) for x in (math.nan, math.inf, -math.inf, -1.0,
                                                      1e308, 5e-324)]
    for i in range(ROUNDS // 4):
        payload = specials[i] if i < len(specials) else mutate(rng, base, pool)

        def one(p: bytes = payload) -> None:
            it = watch(p, timeout=10)
            try:
                next(it)
            finally:
                it.cancel()

        check(WATCH, payload, one)
    alive(child)

    # the bidirectional stream: sequences of good and bad operations
    stream = channel.stream_stream(STREAM, request_serializer=_identity,
                                   response_deserializer=_identity)
    ops = [op.SerializeToString() for op in table["/secretvault.v1.CryptoService/Batch"][0]
           .operations]
    for _ in range(ROUNDS):
        frames = [rng.choice(ops) if rng.random() < 0.4 else mutate(rng, rng.choice(ops), pool)
                  for _ in range(rng.randrange(1, 6))]
        check(STREAM, frames[0], lambda f=frames: list(stream(iter(f), timeout=10)))
    alive(child)

    # oversized: refused by the transport with RESOURCE_EXHAUSTED, not INTERNAL
    sign = channel.unary_unary("/secretvault.v1.CryptoService/Sign",
                               request_serializer=_identity, response_deserializer=_identity)
    for size in (PAYLOAD_LIMIT + 1, PAYLOAD_LIMIT * 2, 16 << 20):
        try:
            sign(b"\x12" + _varint(size) + b"\0" * size, timeout=30)
            raise AssertionError("an oversized message was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
        sent += 1
    alive(child)

    print(f"{sent} messages: {dict(sorted(codes.items()))}")
    assert bad == [], "\n".join(bad[:20])
    assert sent >= 3000
    assert codes["INVALID_ARGUMENT"] > 500  # the garbage really reached the decoders


def test_raw_bytes_that_are_not_grpc(child: Child) -> None:
    rng = random.Random(int(os.environ.get("BAD_INPUT_SEED", "7")))
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for i in range(300):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(child.socket)
        try:
            if i % 3 == 0:
                s.sendall(rng.randbytes(rng.randrange(1, 4096)))
            elif i % 3 == 1:  # a valid preface, then garbage frames
                s.sendall(preface + rng.randbytes(rng.randrange(1, 4096)))
            else:  # a frame header announcing more than is sent, then hang up
                s.sendall(preface + b"\x00\xff\xff\x00\x00\x00\x00\x00\x01")
        except OSError:
            pass  # the server may hang up first: that is fine
        finally:
            s.close()
    alive(child)


def test_garbage_and_idle_streams_from_an_identity_with_no_grants(child: Child) -> None:
    seed = int(os.environ.get("BAD_INPUT_SEED", random.randrange(2**32)))
    print(f"BAD_INPUT_SEED={seed}")
    rng = random.Random(seed)
    v = stubs(child.socket)
    ipk = v.keys.GetImportKey(keys_pb2.GetImportKeyRequest()).public_key
    # keys of this test's own: the garbage sent to every method before may
    # delete any key the seed requests name (a DeleteKeyRequest spliced with
    # GetPublicKeyRequest(name="bi/aead") is a valid delete of bi/aead)
    for name, t in (("ng/ed", ED25519), ("ng/aead", AEAD), ("ng/mac", HMAC)):
        v.create(name, t)
    table = seeds(ipk, v.sign("ng/ed").signature,
                  v.crypto.Encrypt(crypto_pb2.EncryptRequest(key="ng/aead")).ciphertext,
                  v.crypto.Mac(crypto_pb2.MacRequest(key="ng/mac")).mac)
    pool = [m.SerializeToString() for ms in table.values() for m in ms]
    nobody = os.path.join(os.path.dirname(os.path.dirname(child.socket)), "nobody", "n.sock")
    channel = grpc.insecure_channel(f"unix:{nobody}")
    # granted nothing: every answer is a refusal, of the request or of the caller
    allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}
    codes: collections.Counter[str] = collections.Counter()
    bad: list[str] = []

    def check(method: str, call: Callable[[], Any]) -> None:
        try:
            call()
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        codes[code.name] += 1
        if code not in allowed:
            bad.append(f"{method}: {code.name}")

    for method, messages in table.items():
        call = channel.unary_unary(method, request_serializer=_identity,
                                   response_deserializer=_identity)
        raw = [m.SerializeToString() for m in messages]
        for i in range(max(ROUNDS // 8, 2)):
            payload = mutate(rng, rng.choice(raw), pool) if i else rng.choice(raw)
            check(method, lambda p=payload: call(p, timeout=10))
    watch = channel.unary_stream(WATCH, request_serializer=_identity,
                                 response_deserializer=_identity)
    check(WATCH, lambda: next(watch(stats_pb2.WatchStatsRequest().SerializeToString(),
                                    timeout=10)))
    stream = channel.stream_stream(STREAM, request_serializer=_identity,
                                   response_deserializer=_identity)
    ops = [op.SerializeToString() for op in table["/secretvault.v1.CryptoService/Batch"][0]
           .operations]
    for _ in range(ROUNDS // 8):
        frames = [mutate(rng, rng.choice(ops), pool) for _ in range(rng.randrange(1, 4))]
        check(STREAM, lambda f=frames: list(stream(iter(f), timeout=10)))

    # streams that never send anything, more of them than the server has threads:
    # each must be refused when it opens, not left holding a thread until its deadline
    stop = threading.Event()

    def silent() -> Iterator[bytes]:
        stop.wait(30)
        yield from ()

    t0 = time.monotonic()
    calls = [stream(silent(), timeout=10) for _ in range(WORKERS + 16)]
    try:
        for c in calls:
            check(STREAM + " (idle)", lambda c=c: next(c))
        refused_in = time.monotonic() - t0
        # meanwhile the owner is served at once
        sig = v.crypto.Sign(crypto_pb2.SignRequest(key="canary", message=b"m"), timeout=5)
        assert sig.key_version == 1
    finally:
        stop.set()
    print(f"from an identity granted nothing: {dict(sorted(codes.items()))}; "
          f"{len(calls)} idle streams refused in {refused_in:.2f} s")
    assert bad == [], "\n".join(bad[:20])
    assert codes["PERMISSION_DENIED"] >= len(calls) and codes["INVALID_ARGUMENT"] > 50
    assert refused_in < 5
    alive(child)
