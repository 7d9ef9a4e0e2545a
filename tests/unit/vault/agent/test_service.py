"""The dispatcher: what each identity lists and may sign with, and FAILURE for the rest."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from nacl.signing import VerifyKey

from secretvault.backends import SlotAllocator
from secretvault.vault.agent import keys, wire
from secretvault.vault.keyring import Keyring
from tests.unit.vault.agent._support import (
    audit_lines,
    policy,
    s,
    service,
    session,
    sign_body,
    signature_of,
)

POLICY = """
[identities.dev]
[[identities.dev.allow]]
operations = ["sign"]
keys = ["dev/*"]
"""


def _listed(reply: bytes) -> list[tuple[bytes, bytes]]:
    assert reply[4] == wire.IDENTITIES_ANSWER
    body = reply[5:]
    (n,) = struct.unpack_from(">I", body)
    out, off = [], 4
    for _ in range(n):
        (k,) = struct.unpack_from(">I", body, off)
        b = body[off + 4:off + 4 + k]
        off += 4 + k
        (c,) = struct.unpack_from(">I", body, off)
        out.append((b, body[off + 4:off + 4 + c]))
        off += 4 + c
    return out


def test_each_identity_lists_the_ed25519_keys_it_may_sign_with(
        ring: Keyring, allocator: SlotAllocator, tmp_path: Path) -> None:
    for name in ("dev/a", "ops/b"):
        ring.create(name, "ed25519")
    ring.create("dev/mac", "hmac-sha256")
    svc = service(ring, allocator, tmp_path, policy(POLICY, tmp_path))
    owner = _listed(svc.handle(session(), wire.REQUEST_IDENTITIES, b""))
    assert sorted(c for _, c in owner) == [b"dev/a", b"ops/b"]
    assert _listed(svc.handle(session("dev"), wire.REQUEST_IDENTITIES, b"")) == [
        (keys.key_blob(ring.public_key("dev/a")), b"dev/a")]
    assert _listed(svc.handle(session("nobody"), wire.REQUEST_IDENTITIES, b"")) == []


def test_it_signs_with_what_the_identity_may_use_only(
        ring: Keyring, allocator: SlotAllocator, tmp_path: Path) -> None:
    ring.create("dev/a", "ed25519")
    ring.create("ops/b", "ed25519")
    svc = service(ring, allocator, tmp_path, policy(POLICY, tmp_path))
    pk = ring.public_key("dev/a")
    reply = svc.handle(session("dev"), wire.SIGN_REQUEST, sign_body(pk, b"data"))
    VerifyKey(pk).verify(b"data", signature_of(reply))
    denied = svc.handle(session("dev"), wire.SIGN_REQUEST,
                        sign_body(ring.public_key("ops/b"), b"data"))
    assert denied == wire.FAILURE_MESSAGE
    unknown = svc.handle(session("dev"), wire.SIGN_REQUEST, sign_body(b"\1" * 32, b"data"))
    assert unknown == wire.FAILURE_MESSAGE
    lines = [json.loads(line) for line in audit_lines(tmp_path)]
    assert [(r["key"], r["version"], r["result"]) for r in lines] == [
        ("dev/a", 1, "ok"), ("ops/b", None, "PERMISSION_DENIED"),
        (keys.fingerprint(keys.key_blob(b"\1" * 32)), None, "NOT_FOUND")]


def test_a_rotated_key_signs_only_as_the_key_it_was_listed_as(
        ring: Keyring, allocator: SlotAllocator, tmp_path: Path) -> None:
    ring.create("k", "ed25519")
    svc = service(ring, allocator, tmp_path)
    old = ring.public_key("k")
    svc.handle(session(), wire.SIGN_REQUEST, sign_body(old, b"x"))
    ring.rotate("k")
    # the old public key is no longer the primary: no signature by another key
    assert svc.handle(session(), wire.SIGN_REQUEST, sign_body(old, b"x")) == \
        wire.FAILURE_MESSAGE
    new = ring.public_key("k")
    VerifyKey(new).verify(b"x", signature_of(
        svc.handle(session(), wire.SIGN_REQUEST, sign_body(new, b"x"))))


def test_unknown_and_malformed_messages_fail(ring: Keyring, allocator: SlotAllocator,
                                             tmp_path: Path) -> None:
    svc = service(ring, allocator, tmp_path)
    for kind, body in ((99, b""), (1, b""), (wire.REQUEST_IDENTITIES, b"x"),
                       (wire.SIGN_REQUEST, b"\0\0\0\x05ab"), (wire.REMOVE_IDENTITY, b""),
                       (wire.EXTENSION, s(b"query")), (wire.EXTENSION, b"")):
        assert svc.handle(session(), kind, body) == wire.FAILURE_MESSAGE, kind
    bad_bind = s(b"session-bind@openssh.com") + b"\0"
    assert svc.handle(session(), wire.EXTENSION, bad_bind) == wire.EXTENSION_FAILURE_MESSAGE
    counts = {(c.operation, c.result): c.count for c in svc.record.counters.snapshot()}
    assert counts[("ssh_unknown_message", "INVALID_ARGUMENT")] == 2
    assert counts[("ssh_extension", "UNIMPLEMENTED")] == 1
