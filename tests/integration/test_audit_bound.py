"""The audit trail stays small whatever a request carries (issue 13, item 4).

A key name is at most 128 characters, yet the audit once wrote a request's
key field whole, escaping each control character into six bytes: a denied
4 MiB request wrote 24 MiB of audit.  Oversized names are refused at the
edge (INVALID_ARGUMENT) before anything names them, and every audit line is
bounded.  These send real oversized requests, from an identity that is
denied and from the owner, by every form (unary, Batch, Stream), and measure
how much the audit file grows per request byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2
from secretvault.vault.audit import MAX_LINE
from secretvault.vault.server import VaultServer
from tests.integration._support import cleanup, code_of, short_dir, start, stubs

POLICY = """
[identities.stranger]
[[identities.stranger.sockets]]
path = "{base}/stranger.sock"
[[identities.stranger.allow]]
operations = ["sign"]
keys = ["other/*"]
"""

#: a key field of control characters, each of which the audit would escape as \\u00XX
BIG = 1 << 20


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[str, VaultServer]]:
    base = short_dir()
    path = os.path.join(base, "policy.toml")
    with open(path, "w") as f:
        f.write(POLICY.format(base=base))
    try:
        with start(base, policy_file=path, max_message_bytes=4 << 20) as server:
            stubs(server.config.vault.socket).create("team/k")
            yield base, server
    finally:
        cleanup(base)


def _sign(name: str) -> crypto_pb2.SignRequest:
    return crypto_pb2.SignRequest(key=name, message=b"m")


FORMS = ["sign", "get_key", "batch", "stream"]


def _send(s: object, form: str, name: str) -> tuple[grpc.StatusCode, str]:
    st: object = s
    if form == "sign":
        code, details, _ = code_of(st.crypto.Sign, _sign(name))  # type: ignore[attr-defined]
    elif form == "get_key":
        code, details, _ = code_of(st.keys.GetKey,  # type: ignore[attr-defined]
                                   keys_pb2.GetKeyRequest(name=name))
    elif form == "batch":
        ops = [crypto_pb2.Operation(sign=_sign("team/k")), crypto_pb2.Operation(sign=_sign(name))]
        code, details, _ = code_of(st.crypto.Batch,  # type: ignore[attr-defined]
                                   crypto_pb2.BatchRequest(operations=ops))
    else:
        def ops() -> Iterator[crypto_pb2.Operation]:
            yield crypto_pb2.Operation(sign=_sign(name))

        code, details, _ = code_of(lambda: list(st.crypto.Stream(ops())))  # type: ignore[attr-defined]
    return code, details


@pytest.mark.parametrize("who", ["stranger", "owner"])
@pytest.mark.parametrize("form", FORMS)
def test_an_oversized_key_name_is_refused_and_barely_audited(
        world: tuple[str, VaultServer], who: str, form: str) -> None:
    base, server = world
    sock = server.config.vault.socket if who == "owner" else os.path.join(base, "stranger.sock")
    s = stubs(sock)
    audit = os.path.join(base, "audit.log")
    name = "\x01" * BIG
    before = os.path.getsize(audit)
    sent = 0
    for _ in range(3):
        code, details = _send(s, form, name)
        sent += BIG
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:200])
        assert "128" in details, details[:200]
    grown = os.path.getsize(audit) - before
    print(f"{who} {form}: {grown / sent:.6f} audit bytes per request byte")
    # each refused call is at most a line or two (a batch's summary), never its key
    assert grown / sent < 0.001, f"{grown} audit bytes for {sent} request bytes"
    with open(audit, "rb") as f:
        f.seek(before)
        lines = f.read().splitlines()
    assert lines and all(len(line) < MAX_LINE for line in lines)
    # the server still serves
    assert stubs(server.config.vault.socket).sign("team/k").signature


def test_a_name_of_128_characters_still_reaches_the_keyring(
        world: tuple[str, VaultServer]) -> None:
    s = stubs(world[1].config.vault.socket)
    code, details, _ = code_of(s.crypto.Sign, _sign("a" * 128))
    assert code == grpc.StatusCode.NOT_FOUND, details
    code, details, _ = code_of(s.crypto.Sign, _sign("a" * 129))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
