"""Local helpers: verify, export, seal for import, encrypt to an X25519 key.

The counterparts are independent implementations: ``cryptography`` signs and
writes PKCS#8 files, PyNaCl opens sealed boxes with the private key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from nacl.public import PrivateKey, SealedBox

from secretvault.api import framing
from secretvault.api.errors import (
    InvalidArgument,
    InvalidImport,
    MalformedCiphertext,
    WrongKeyType,
)
from secretvault.api.framing import Kind
from secretvault.clients import local
from secretvault.clients._types import PublicKey

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _ed25519() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(*RAW)


# --- verify ---------------------------------------------------------------------------


def test_verify_a_token_and_a_raw_signature() -> None:
    key, public = _ed25519()
    raw = key.sign(b"message")
    token = framing.frame(Kind.SIGNATURE, 3, raw)
    assert local.verify_signature(public, b"message", token)
    assert local.verify_signature(public, b"message", raw)
    assert not local.verify_signature(public, b"other message", token)
    forged = bytearray(raw)
    forged[10] ^= 1
    assert not local.verify_signature(public, b"message", bytes(forged))


def test_verify_accepts_pem_and_openssh_public_keys() -> None:
    key, _ = _ed25519()
    sig = key.sign(b"m")
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ssh = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert local.verify_signature(pem, b"m", sig)
    assert local.verify_signature(ssh + b" comment\n", b"m", sig)


def test_verify_refuses_tokens_of_another_kind_and_bad_keys() -> None:
    key, public = _ed25519()
    mac_token = framing.frame(Kind.MAC, 1, bytes(32))
    with pytest.raises(MalformedCiphertext):
        local.verify_signature(public, b"m", mac_token)
    with pytest.raises(MalformedCiphertext):
        local.verify_signature(public, b"m", b"x" * 70)  # no SV header
    with pytest.raises(InvalidArgument):
        local.verify_signature(b"short", b"m", key.sign(b"m"))
    x_pem = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(WrongKeyType):
        local.verify_signature(x_pem, b"m", key.sign(b"m"))


def test_public_key_verify_checks_the_version_in_the_token() -> None:
    key, public = _ed25519()
    pub = PublicKey("k", "ed25519", 2, "raw", public, public)
    raw = key.sign(b"m")
    assert pub.verify(b"m", framing.frame(Kind.SIGNATURE, 2, raw))
    # the right bytes, but the token says another version signed it
    assert not pub.verify(b"m", framing.frame(Kind.SIGNATURE, 1, raw))


# --- export -------------------------------------------------------------------------


def test_export_matches_cryptography() -> None:
    key, public = _ed25519()
    pk = key.public_key()
    assert local.export_public_key("ed25519", public, "raw") == public
    assert local.export_public_key("ed25519", public, "pem") == pk.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ssh = local.export_public_key("ed25519", public, "openssh", comment="ci")
    assert ssh.startswith(b"ssh-ed25519 ") and ssh.endswith(b" ci\n")
    assert serialization.load_ssh_public_key(ssh.split(b" ci")[0]).public_bytes(*RAW) == public
    jwk = json.loads(local.export_public_key("ed25519", public, "jwk", kid="k#1"))
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["kid"] == "k#1"


def test_export_refuses_what_has_no_encoding() -> None:
    with pytest.raises(WrongKeyType):
        local.export_public_key("hmac-sha256", bytes(32), "pem")
    with pytest.raises(InvalidArgument):
        local.export_public_key("x25519", bytes(32), "openssh")
    with pytest.raises(InvalidArgument):
        local.export_public_key("ed25519", bytes(32), "der")


# --- sealing for import ----------------------------------------------------------------


def test_seal_for_import_opens_with_the_import_private_key() -> None:
    import_key = PrivateKey.generate()
    material = os.urandom(32)
    wrapped = local.seal_for_import(bytes(import_key.public_key), "xchacha20-poly1305", material)
    assert len(wrapped) == 32 + 48
    assert SealedBox(import_key).decrypt(wrapped) == material


@pytest.mark.parametrize(
    ("key_type", "length"),
    [("ed25519", 31), ("x25519", 33), ("xchacha20-poly1305", 16), ("hmac-sha256", 15),
     ("hmac-sha256", 129)],
)
def test_seal_for_import_checks_lengths(key_type: str, length: int) -> None:
    with pytest.raises(InvalidImport):
        local.seal_for_import(bytes(32), key_type, bytes(length))


def test_seal_for_import_refuses_unknown_types() -> None:
    with pytest.raises(WrongKeyType):
        local.seal_for_import(bytes(32), "rsa", bytes(32))


def test_parse_pkcs8_pem_and_der_match_the_private_bytes() -> None:
    for key_type, key in (("ed25519", Ed25519PrivateKey.generate()),
                          ("x25519", X25519PrivateKey.generate())):
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
            data = key.private_bytes(encoding, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
            assert local.parse_key_material(key_type, data) == raw
        assert local.parse_key_material(key_type, raw) == raw


def test_parse_refuses_other_pem_files() -> None:
    key = Ed25519PrivateKey.generate()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(InvalidImport, match="ENCRYPTED PRIVATE KEY"):
        local.parse_key_material("ed25519", encrypted)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with pytest.raises(InvalidImport, match="x25519"):
        local.parse_key_material("x25519", pem)  # an Ed25519 key is not an X25519 key
    with pytest.raises(InvalidImport, match="raw"):
        local.parse_key_material("hmac-sha256", pem)


def test_read_key_material_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "hmac.key"
    path.write_bytes(b"k" * 48)
    material = local.read_key_material(str(path), "hmac-sha256")
    assert material == bytearray(b"k" * 48)
    local.wipe(material)
    assert material == bytearray(48)
    (tmp_path / "big").write_bytes(bytes(100_000))
    with pytest.raises(InvalidImport, match="not a key file"):
        local.read_key_material(str(tmp_path / "big"), "hmac-sha256")


# --- encrypt to an X25519 key --------------------------------------------------------------


def test_encrypt_to_makes_a_sealed_box_token_for_that_version() -> None:
    recipient = PrivateKey.generate()
    token = local.encrypt_to(bytes(recipient.public_key), 7, b"for the vault only")
    version, box = local.sealed_box_payload(token)
    assert version == 7
    assert token[:3] == b"SVB"
    assert SealedBox(recipient).decrypt(box) == b"for the vault only"
    # fresh ephemeral key each time
    assert local.encrypt_to(bytes(recipient.public_key), 7, b"x") != local.encrypt_to(
        bytes(recipient.public_key), 7, b"x"
    )


def test_public_key_encrypt_only_for_x25519() -> None:
    recipient = PrivateKey.generate()
    raw = bytes(recipient.public_key)
    pub = PublicKey("inbox", "x25519", 1, "raw", raw, raw)
    assert SealedBox(recipient).decrypt(local.sealed_box_payload(pub.encrypt(b"hi"))[1]) == b"hi"
    with pytest.raises(WrongKeyType):
        PublicKey("sig", "ed25519", 1, "raw", raw, raw).encrypt(b"hi")


def test_encrypt_to_checks_its_inputs() -> None:
    with pytest.raises(InvalidArgument):
        local.encrypt_to(bytes(31), 1, b"x")
    with pytest.raises(InvalidArgument):
        local.encrypt_to(bytes(32), 0, b"x")
    with pytest.raises(MalformedCiphertext):
        local.sealed_box_payload(framing.frame(Kind.SEALED_BOX, 1, bytes(47)))
