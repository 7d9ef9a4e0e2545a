"""session-bind@openssh.com: parsed, its Ed25519 host signature checked."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from secretvault.vault.agent import extensions
from secretvault.vault.agent.keys import fingerprint
from secretvault.vault.agent.wire import Malformed, Reader
from tests.unit.vault.agent._support import blob, s


def _bind(host: SigningKey, session_id: bytes, signature: bytes | None = None,
          forwarding: bytes = b"\0") -> bytes:
    sig = signature if signature is not None else host.sign(session_id).signature
    return (s(blob(bytes(host.verify_key))) + s(session_id) + s(s(b"ssh-ed25519") + s(sig))
            + forwarding)


def test_a_bind_signed_by_its_host_key_is_verified() -> None:
    host = SigningKey.generate()
    bind = extensions.session_bind(Reader(_bind(host, b"\7" * 32)))
    assert bind.verified and not bind.forwarding and bind.session_id == "07" * 32
    assert bind.host_key == fingerprint(blob(bytes(host.verify_key)))


def test_a_bad_signature_is_refused() -> None:
    with pytest.raises(extensions.BadBind):
        extensions.session_bind(Reader(_bind(SigningKey.generate(), b"\7" * 32, b"\0" * 64)))


def test_another_host_key_type_is_recorded_unverified() -> None:
    rsa = s(b"ssh-rsa") + s(b"\1\0\1") + s(b"\0" * 64)
    data = s(rsa) + s(b"\7" * 32) + s(s(b"rsa-sha2-256") + s(b"\0" * 64)) + b"\1"
    bind = extensions.session_bind(Reader(data))
    assert not bind.verified and bind.forwarding


@pytest.mark.parametrize("data", [b"", _bind(SigningKey.generate(), b"\7" * 32)[:-1],
                                  _bind(SigningKey.generate(), b"\7" * 200),
                                  _bind(SigningKey.generate(), b"\7" * 32, forwarding=b"\2")])
def test_malformed_binds(data: bytes) -> None:
    with pytest.raises((Malformed, extensions.BadBind)):
        extensions.session_bind(Reader(data))
