"""Helpers for the agent's unit tests: messages as a client builds them, a service."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from nacl.signing import SigningKey

from secretvault.backends import SlotAllocator
from secretvault.vault.agent.service import AgentService
from secretvault.vault.agent.session import Caller, SecretMessage, Session
from secretvault.vault.audit import AuditLog
from secretvault.vault.keyring import Keyring
from secretvault.vault.policy import Policy
from secretvault.vault.stats import OperationCounters


def s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def blob(public: bytes) -> bytes:
    return s(b"ssh-ed25519") + s(public)


def add_body(key: SigningKey, comment: bytes = b"me@test", constraints: bytes = b"") -> bytes:
    pk = bytes(key.verify_key)
    return s(b"ssh-ed25519") + s(pk) + s(bytes(key) + pk) + s(comment) + constraints


def sign_body(public: bytes, data: bytes) -> bytes:
    return s(blob(public)) + s(data) + b"\0\0\0\0"


def signature_of(reply: bytes) -> bytes:
    """The raw signature in a framed SIGN_RESPONSE."""
    assert reply[4] == 14, reply
    body = reply[5:]
    (n,) = struct.unpack_from(">I", body)
    sig_blob = body[4:4 + n]
    assert sig_blob[:15] == s(b"ssh-ed25519")
    return sig_blob[19:]


def service(ring: Keyring, allocator: SlotAllocator, tmp: Path, policy: Policy | None = None,
            *, persist: bool = False, max_keys: int = 8) -> AgentService:
    return AgentService(ring, allocator, policy or Policy(), AuditLog(str(tmp / "audit.log")),
                        OperationCounters(), persist=persist, max_keys=max_keys)


def session(identity: str = "owner") -> Session:
    return Session(Caller(identity, "ssh-agent:/test"))


def secret_message(body: bytes, allocator: SlotAllocator) -> tuple[SecretMessage, socket.socket]:
    """A message's contents as the session reads them: off a real socket."""
    a, b = socket.socketpair()
    a.sendall(body)
    a.close()
    b.settimeout(5)
    return SecretMessage(b, len(body), allocator), b


def policy(text: str, tmp: Path) -> Policy:
    path = tmp / "policy.toml"
    path.write_text(text)
    return Policy.load(str(path))


def audit_lines(tmp: Path) -> list[str]:
    path = tmp / "audit.log"
    return path.read_text().splitlines() if os.path.exists(path) else []
