"""``CryptoServicer.Batch`` runs consecutive signs with one key together
(``Keyring.sign_each``): each operation still gets exactly the result its own
unary call would have, in order, with its id.

In-process, on a real keyring (page-model slots): runs of several lengths, a
run that crosses a span (``CHECK_EVERY``), runs broken by another key, by
another kind of operation, a run on a key that does not exist or is of
another type (each of its operations says why, as the unary call does), and
every signature checked with the public key of the version it names.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secretvault.api import framing
from secretvault.api._proto.secretvault.v1 import crypto_pb2
from secretvault.api.errors import KeyNotFound, WrongKeyType
from secretvault.vault import errors
from secretvault.vault.batch_turns import CHECK_EVERY
from secretvault.vault.keyring import Keyring
from secretvault.vault.servicers import CryptoServicer


class _Alive:
    def is_active(self) -> bool:
        return True


def _sign(i: int, key: str, message: bytes | None = None) -> crypto_pb2.Operation:
    return crypto_pb2.Operation(id=i, sign=crypto_pb2.SignRequest(
        key=key, message=message if message is not None else b"m%d" % i))


def _unary_error(call: object) -> tuple[int, str]:
    try:
        call()  # type: ignore[operator]
    except Exception as e:
        code, name, _ = errors.describe(e, "sign")
        return errors.code_number(code), name
    raise AssertionError("the unary call succeeded")


def test_runs_of_signs_give_each_operation_its_own_result(ring: Keyring) -> None:
    ring.create("a", "ed25519")
    ring.create("b", "ed25519")
    ring.rotate("b")  # b signs with version 2
    ring.create("box", "x25519")
    ring.create("h", "hmac-sha256")
    ops = ([_sign(i, "a") for i in range(3)]                 # a run of 3
           + [_sign(3, "b"), _sign(4, "b")]                  # another key: a new run
           + [_sign(5, "missing"), _sign(6, "missing")]      # a run that is refused
           + [crypto_pb2.Operation(id=7, mac=crypto_pb2.MacRequest(key="h", message=b"x"))]
           + [_sign(8, "a", b"")]                            # an empty message
           + [_sign(9, "box")]                               # another type
           + [_sign(10 + i, "a") for i in range(CHECK_EVERY + 4)])  # across a span
    response = CryptoServicer(ring).Batch(crypto_pb2.BatchRequest(operations=ops), _Alive())
    assert [r.id for r in response.results] == [op.id for op in ops]
    public = {(name, v): Ed25519PublicKey.from_public_bytes(ring.public_key(name, v, "raw"))
              for name, v in (("a", 1), ("b", 2))}
    for op, r in zip(ops, response.results, strict=True):
        if op.WhichOneof("op") == "sign" and op.sign.key in ("a", "b"):
            assert r.WhichOneof("result") == "sign", r
            version, raw = framing.unframe(framing.Kind.SIGNATURE, r.sign.signature)
            assert version == r.sign.key_version == (2 if op.sign.key == "b" else 1)
            public[(op.sign.key, version)].verify(raw, op.sign.message)
    by_id = {r.id: r for r in response.results}
    # each operation of the refused run says why, as its unary call would
    for i in (5, 6):
        assert (by_id[i].error.code, by_id[i].error.error) == _unary_error(
            lambda: ring.sign("missing", b"m")) == (5, KeyNotFound.__name__)
        assert "missing" in by_id[i].error.message
    assert (by_id[9].error.code, by_id[9].error.error) == _unary_error(
        lambda: ring.sign("box", b"m"))
    assert by_id[9].error.error == WrongKeyType.__name__
    assert by_id[7].WhichOneof("result") == "mac"


@pytest.mark.parametrize("n", [1, 2, CHECK_EVERY - 1, CHECK_EVERY, CHECK_EVERY + 1,
                               3 * CHECK_EVERY])
def test_sign_each_signs_every_message_with_the_primary_version(ring: Keyring, n: int) -> None:
    ring.create("k", "ed25519")
    ring.rotate("k")
    messages = [b"message %d" % i for i in range(n)]
    version, tokens = ring.sign_each("k", messages)
    assert version == 2 and len(tokens) == n
    key = Ed25519PublicKey.from_public_bytes(ring.public_key("k", 2, "raw"))
    for message, token in zip(messages, tokens, strict=True):
        assert ring.verify("k", message, token)
        key.verify(framing.unframe(framing.Kind.SIGNATURE, token)[1], message)
    # the same signatures as one call each (Ed25519 is deterministic)
    assert list(tokens) == [ring.sign("k", m)[1] for m in messages]
    with pytest.raises(KeyNotFound):
        ring.sign_each("nope", messages)
