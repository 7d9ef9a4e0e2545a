"""ssh-add, -d, -D, -t, -c, -x/-X through the dispatcher, each audited."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey, VerifyKey

from secretvault.api.errors import StoreSealed
from secretvault.backends import SlotAllocator
from secretvault.vault.agent import keys, wire
from secretvault.vault.agent.changes import persisted_name
from secretvault.vault.keyring import Keyring
from tests.unit.vault.agent._support import (
    add_body,
    audit_lines,
    blob,
    policy,
    s,
    secret_message,
    service,
    session,
    sign_body,
    signature_of,
)

GRANTS = """
[identities.dev]
[[identities.dev.allow]]
operations = ["ssh_add_key", "ssh_remove_key"]

[identities.ro]
"""


def _add(svc, allocator: SlotAllocator, who: str, body: bytes, kind: int = 17) -> bytes:  # type: ignore[no-untyped-def]
    msg, conn = secret_message(body, allocator)
    try:
        return svc.handle_secret(session(who), kind, msg)
    finally:
        msg.drain()
        conn.close()


def test_an_added_key_signs_and_is_removed(ring: Keyring, allocator: SlotAllocator,
                                           tmp_path: Path) -> None:
    svc = service(ring, allocator, tmp_path, policy(GRANTS, tmp_path))
    key = SigningKey.generate()
    pk = bytes(key.verify_key)
    assert _add(svc, allocator, "dev", add_body(key)) == wire.SUCCESS_MESSAGE
    VerifyKey(pk).verify(b"m", signature_of(
        svc.handle(session("dev"), wire.SIGN_REQUEST, sign_body(pk, b"m"))))
    # another identity does not see it, nor sign with it
    assert svc.handle(session("ro"), wire.SIGN_REQUEST, sign_body(pk, b"m")) == \
        wire.FAILURE_MESSAGE
    assert svc.handle(session("dev"), wire.REMOVE_IDENTITY, s(blob(pk))) == \
        wire.SUCCESS_MESSAGE
    assert svc.handle(session("dev"), wire.SIGN_REQUEST, sign_body(pk, b"m")) == \
        wire.FAILURE_MESSAGE
    assert svc.handle(session("dev"), wire.REMOVE_IDENTITY, s(blob(pk))) == \
        wire.FAILURE_MESSAGE
    results = [(r["operation"], r["result"]) for r in map(json.loads, audit_lines(tmp_path))]
    assert results[:2] == [("ssh_add", "attempt"), ("ssh_add", "ok")]
    assert ("ssh_remove", "ok") in results and ("ssh_remove", "NOT_FOUND") in results


def test_adding_and_removing_need_their_grants(ring: Keyring, allocator: SlotAllocator,
                                               tmp_path: Path) -> None:
    svc = service(ring, allocator, tmp_path, policy(GRANTS, tmp_path))
    before = allocator.statistics().key_bytes
    assert _add(svc, allocator, "ro", add_body(SigningKey.generate())) == wire.FAILURE_MESSAGE
    assert allocator.statistics().key_bytes == before  # nothing kept, the message drained
    assert svc.handle(session("ro"), wire.REMOVE_ALL_IDENTITIES, b"") == wire.FAILURE_MESSAGE
    results = [(r["operation"], r["result"]) for r in map(json.loads, audit_lines(tmp_path))]
    assert results == [("ssh_add", "PERMISSION_DENIED"), ("ssh_remove_all", "PERMISSION_DENIED")]


def test_a_key_that_does_not_match_its_public_key_is_refused(
        ring: Keyring, allocator: SlotAllocator, tmp_path: Path) -> None:
    svc = service(ring, allocator, tmp_path)
    a, b = SigningKey.generate(), SigningKey.generate()
    body = (s(b"ssh-ed25519") + s(bytes(b.verify_key)) + s(bytes(a) + bytes(a.verify_key))
            + s(b"c"))
    before = allocator.statistics().key_bytes
    assert _add(svc, allocator, "owner", body) == wire.FAILURE_MESSAGE
    assert allocator.statistics().key_bytes == before
    rsa = s(b"ssh-rsa") + s(b"\1" * 32)
    assert _add(svc, allocator, "owner", rsa) == wire.FAILURE_MESSAGE


def test_constraints_lifetime_kept_confirm_refused(ring: Keyring, allocator: SlotAllocator,
                                                   tmp_path: Path) -> None:
    svc = service(ring, allocator, tmp_path)
    key = SigningKey.generate()
    pk = bytes(key.verify_key)
    confirm = add_body(key, constraints=b"\x02")
    assert _add(svc, allocator, "owner", confirm, 25) == wire.FAILURE_MESSAGE
    assert _add(svc, allocator, "owner", add_body(key, constraints=b"\xff" + s(b"x@y")),
                25) == wire.FAILURE_MESSAGE
    timed = add_body(key, constraints=b"\x01" + struct.pack(">I", 1))
    assert _add(svc, allocator, "owner", timed, 25) == wire.SUCCESS_MESSAGE
    assert svc.handle(session(), wire.SIGN_REQUEST, sign_body(pk, b"m"))[4] == 14
    time.sleep(1.1)
    svc.sweep("ssh-agent:/test")
    assert svc.handle(session(), wire.SIGN_REQUEST, sign_body(pk, b"m")) == \
        wire.FAILURE_MESSAGE
    assert any('"ssh_expire"' in line for line in audit_lines(tmp_path))


def test_remove_all_and_the_cap(ring: Keyring, allocator: SlotAllocator,
                                tmp_path: Path) -> None:
    svc = service(ring, allocator, tmp_path, max_keys=2)
    added = [SigningKey.generate() for _ in range(3)]
    replies = [_add(svc, allocator, "owner", add_body(k)) for k in added]
    assert replies == [wire.SUCCESS_MESSAGE] * 2 + [wire.FAILURE_MESSAGE]
    assert svc.handle(session(), wire.REMOVE_ALL_IDENTITIES, b"") == wire.SUCCESS_MESSAGE
    assert svc.handle(session(), wire.REQUEST_IDENTITIES, b"") == \
        wire.message(wire.IDENTITIES_ANSWER, b"\0\0\0\0")


def test_lock_hides_and_refuses_until_unlocked(ring: Keyring, allocator: SlotAllocator,
                                               tmp_path: Path) -> None:
    ring.create("k", "ed25519")
    svc = service(ring, allocator, tmp_path)
    pk = ring.public_key("k")
    assert _add(svc, allocator, "owner", s(b"secret"), wire.LOCK) == wire.SUCCESS_MESSAGE
    assert svc.handle(session(), wire.REQUEST_IDENTITIES, b"") == \
        wire.message(wire.IDENTITIES_ANSWER, b"\0\0\0\0")
    assert svc.handle(session(), wire.SIGN_REQUEST, sign_body(pk, b"m")) == \
        wire.FAILURE_MESSAGE
    assert _add(svc, allocator, "owner", add_body(SigningKey.generate())) == \
        wire.FAILURE_MESSAGE
    started = time.monotonic()
    assert _add(svc, allocator, "owner", s(b"guess"), wire.UNLOCK) == wire.FAILURE_MESSAGE
    assert time.monotonic() - started >= 0.1  # a wrong guess waits
    assert _add(svc, allocator, "owner", s(b"secret"), wire.UNLOCK) == wire.SUCCESS_MESSAGE
    assert svc.handle(session(), wire.SIGN_REQUEST, sign_body(pk, b"m"))[4] == 14


def test_persisted_keys_are_sealed_vault_keys(ring: Keyring, allocator: SlotAllocator,
                                              tmp_path: Path) -> None:
    svc = service(ring, allocator, tmp_path, policy(GRANTS, tmp_path), persist=True)
    key = SigningKey.generate()
    pk = bytes(key.verify_key)
    assert _add(svc, allocator, "dev", add_body(key, b"laptop")) == wire.SUCCESS_MESSAGE
    name = persisted_name("dev", keys.key_blob(pk))
    info = ring.get(name)
    assert info.labels == {"ssh-comment": "laptop"} and ring.public_key(name) == pk
    # adding it again: it exists; the second slot is freed, not leaked
    before = allocator.statistics().key_bytes
    assert _add(svc, allocator, "dev", add_body(key)) == wire.FAILURE_MESSAGE
    assert allocator.statistics().key_bytes == before
    # dev signs with its own persisted key (no sign grant needed), others do not
    assert svc.handle(session("dev"), wire.SIGN_REQUEST, sign_body(pk, b"m"))[4] == 14
    assert svc.handle(session("ro"), wire.SIGN_REQUEST, sign_body(pk, b"m")) == \
        wire.FAILURE_MESSAGE
    assert svc.handle(session("dev"), wire.REMOVE_ALL_IDENTITIES, b"") == wire.SUCCESS_MESSAGE
    assert ring.list("ssh-agent/") == []


def test_a_key_added_while_the_agent_stops_gives_its_slot_back(
    ring: Keyring, allocator: SlotAllocator, tmp_path: Path,
) -> None:
    # a connection still finishing an ssh-add when the agent stops: the key
    # received into a slot must be zeroed and freed then, not left to the end
    svc = service(ring, allocator, tmp_path, policy(GRANTS, tmp_path))

    def used() -> int:
        return sum(c.slots_used for c in allocator.statistics().slots)

    before = used()
    svc.views.close()
    with pytest.raises(StoreSealed):
        _add(svc, allocator, "dev", add_body(SigningKey.generate()))
    assert used() == before
