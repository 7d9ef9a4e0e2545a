"""The .proto comments are the contract: enough to write a client from them alone.

A client in another language is written from ``proto/secretvault/v1/*.proto``
and nothing else, so every fact it needs is held here to the code that makes
it true: the token header and each kind's letter (``api/framing.py``), every
error class name and its status (``api/errors.py``), the key type each
operation needs, and the names the stats carry.  A new error class, kind or
operation fails here until the .proto says it.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import nacl.bindings as nb
import pytest

from secretvault.api import framing
from secretvault.api._proto.secretvault.v1 import crypto_pb2
from secretvault.api.errors import BY_NAME, ERROR_METADATA_KEY
from secretvault.api.framing import Kind
from secretvault.vault.crypto import OPERATIONS, KeyType
from secretvault.vault.edge.methods import METHODS, op_target

PROTO = Path(__file__).resolve().parents[3] / "proto" / "secretvault" / "v1"
TEXT = {name: (PROTO / f"{name}.proto").read_text() for name in ("crypto", "keys", "stats")}
STATUS_NAMES = {c.name for c in grpc.StatusCode}


def comment_above(proto: str, line_start: str) -> str:
    """The comment lines directly above the line that starts with ``line_start``."""
    lines = TEXT[proto].splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(line_start))
    block: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        block.insert(0, line.strip()[2:].strip())
    return " ".join(block)


def _type_enum(kt: KeyType) -> str:
    return "KEY_TYPE_" + kt.value.upper().replace("-", "_")


# --- tokens ----------------------------------------------------------------------


def test_the_header_is_described_byte_for_byte() -> None:
    text = TEXT["crypto"]
    assert f"{framing.HEADER_SIZE}-byte header" in text
    assert f'"{framing.MAGIC.decode()}" (0x53 0x56)' in text
    assert "uint32 big-endian" in text
    # the worked example is what frame() makes
    example = framing.frame(Kind.SIGNATURE, 2, b"")
    assert " ".join(f"{b:02x}" for b in example) in text


PAYLOAD = {
    Kind.SIGNATURE: [f"{framing.PAYLOAD_BYTES[Kind.SIGNATURE]}-byte Ed25519"],
    Kind.AEAD: [f"{nb.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES}-byte nonce",
                f"{nb.crypto_aead_xchacha20poly1305_ietf_ABYTES}-byte tag"],
    Kind.SEALED_BOX: ["crypto_box_seal", f"({nb.crypto_box_SEALBYTES} bytes more"],
    Kind.MAC: [f"{framing.PAYLOAD_BYTES[Kind.MAC]}-byte HMAC-SHA-256"],
}


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_every_kind_letter_is_listed_with_its_payload(kind: Kind) -> None:
    letter = kind.value.decode()
    entry = f'"{letter}" (0x{kind.value[0]:02X})'
    lines = TEXT["crypto"].splitlines()
    at = next((i for i, line in enumerate(lines) if entry in line), None)
    assert at is not None, f"crypto.proto does not list the token kind {entry}"
    # the entry and its continuation lines (indented deeper than the letter)
    described = " ".join(lines[at:at + 4])
    for fact in PAYLOAD[kind]:
        assert fact in described, (kind, fact)


def test_a_client_made_sealed_box_carries_the_version_it_was_sealed_to() -> None:
    text = " ".join(line.strip("/ ") for line in TEXT["crypto"].splitlines())
    assert "the version whose public key the box was sealed to" in text
    assert "a bare box, without the header, is refused (MalformedCiphertext)" in text


# --- errors ------------------------------------------------------------------------


def documented_errors() -> dict[str, str]:
    """keys.proto's table: every class name under its status code."""
    lines = TEXT["keys"].splitlines()
    start = next(i for i, line in enumerate(lines) if "Each name, under its status code" in line)
    table: dict[str, str] = {}
    status = None
    for line in lines[start + 1:]:
        if not line.startswith("//"):
            break
        if m := re.match(r"//   ([A-Z_]+)\b", line):
            status = m.group(1)
        elif (m := re.match(r"//     ([A-Z][A-Za-z]+)\b", line)) and status is not None:
            table[m.group(1)] = status
    return table


def test_every_error_class_is_documented_under_its_status() -> None:
    table = documented_errors()
    missing = sorted(set(BY_NAME) - set(table))
    assert not missing, (f"add {missing} to the error table in proto/secretvault/v1/keys.proto "
                         "(under its status code), then scripts/gen-proto")
    assert sorted(set(table) - set(BY_NAME)) == [], "the table names classes that do not exist"
    wrong = {n: (s, BY_NAME[n].status) for n, s in table.items() if s != BY_NAME[n].status}
    assert wrong == {}, "documented status != the class's status"


def test_the_trailing_metadata_key_is_named() -> None:
    assert f"{ERROR_METADATA_KEY}: <ClassName>" in TEXT["keys"]
    assert f'"{ERROR_METADATA_KEY}: <ClassName>"' in TEXT["crypto"]


@pytest.mark.parametrize("proto", list(TEXT))
def test_every_status_and_name_pair_in_the_comments_is_true(proto: str) -> None:
    """'NOT_FOUND VersionNotFound' anywhere in a comment must be that class's status."""
    text = " ".join(line.split("//", 1)[1] for line in TEXT[proto].splitlines() if "//" in line)
    pairs = re.findall(r"\b([A-Z][A-Z_]{4,})\s+([A-Z][a-z][A-Za-z]+)\b", text)
    checked = [(s, n) for s, n in pairs if s in STATUS_NAMES and n in BY_NAME]
    assert [(s, n) for s, n in checked if BY_NAME[n].status != s] == []
    if proto != "stats":
        assert checked, "the comments name no status with its class"


# --- the key type each operation needs, and the minimum decryption version ------------


def _rpc(name: str) -> str:
    for proto in ("crypto", "keys"):
        if f"rpc {name}(" in TEXT[proto]:
            return comment_above(proto, f"rpc {name}(")
    raise AssertionError(f"no rpc {name}")


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].operation in OPERATIONS])
def test_each_operation_names_the_key_type_it_needs(method: str) -> None:
    comment = _rpc(method.rsplit("/", 1)[1])
    needs = _type_enum(OPERATIONS[METHODS[method].operation])
    assert f"Needs a {needs} key, else INVALID_ARGUMENT WrongKeyType" in comment, comment


def test_decrypt_names_both_types_and_public_keys_the_symmetric_refusal() -> None:
    decrypt = _rpc("Decrypt")
    for kt in (KeyType.XCHACHA20_POLY1305, KeyType.X25519):
        assert _type_enum(kt) in decrypt
    assert "INVALID_ARGUMENT WrongKeyType" in decrypt
    assert "INVALID_ARGUMENT WrongKeyType for symmetric keys" in _rpc("GetPublicKey")


@pytest.mark.parametrize("rpc", ["Verify", "Decrypt", "VerifyMac"])
def test_a_version_below_the_minimum_is_documented(rpc: str) -> None:
    comment = _rpc(rpc)
    assert "FAILED_PRECONDITION VersionBelowMinimum" in comment
    assert "NOT_FOUND VersionNotFound" in comment  # a version that does not exist


@pytest.mark.parametrize("rpc", ["Verify", "VerifyMac"])
def test_a_token_that_is_not_of_the_kind_is_malformed(rpc: str) -> None:
    assert "INVALID_ARGUMENT MalformedCiphertext" in _rpc(rpc)


# --- the names the stats carry ---------------------------------------------------------


@pytest.mark.parametrize("field", ["map<string, uint64> keys_by_type",
                                   "map<string, uint64> headroom_keys"])
def test_the_key_type_names_are_listed(field: str) -> None:
    comment = comment_above("stats", field)
    for kt in KeyType:
        assert f'"{kt.value}"' in comment, (field, kt)


def recorded_operation_names() -> set[str]:
    """Every operation name the server's counters record, as the code defines them
    (the names of a Batch or Stream refused whole are checked on a real server:
    tests/integration/test_edge.py)."""
    oneof = crypto_pb2.Operation.DESCRIPTOR.oneofs_by_name["op"]
    return ({spec.operation for spec in METHODS.values()} | {f.name for f in oneof.fields}
            | {op_target(crypto_pb2.Operation())[0]})


def test_every_operation_name_is_listed() -> None:
    comment = comment_above("stats", "string operation = 1;")
    missing = sorted(n for n in recorded_operation_names() if f'"{n}"' not in comment)
    assert missing == [], f"stats.proto's OperationCount.operation does not name {missing}"
    assert '"ok"' in comment_above("stats", "string result = 2;")
