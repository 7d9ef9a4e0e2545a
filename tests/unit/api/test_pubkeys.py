"""Public-key encodings, read back by ``cryptography`` (an independent parser)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from secretvault.api.errors import InvalidArgument, WrongKeyType
from secretvault.api.pubkeys import FORMATS, encode_public_key

ED_PK = bytes(SigningKey(bytes(range(32))).verify_key)
X_PK = bytes(PrivateKey(bytes(range(32))).public_key)
RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_raw() -> None:
    assert encode_public_key("ed25519", ED_PK, "raw") == ED_PK
    assert encode_public_key("x25519", X_PK, "raw") == X_PK


def test_pem() -> None:
    ed = serialization.load_pem_public_key(encode_public_key("ed25519", ED_PK, "pem"))
    assert isinstance(ed, Ed25519PublicKey) and ed.public_bytes(*RAW) == ED_PK
    x = serialization.load_pem_public_key(encode_public_key("x25519", X_PK, "pem"))
    assert isinstance(x, X25519PublicKey) and x.public_bytes(*RAW) == X_PK


def test_openssh() -> None:
    line = encode_public_key("ed25519", ED_PK, "openssh", comment="team/k#v3")
    assert line.startswith(b"ssh-ed25519 ") and line.endswith(b" team/k#v3\n")
    key = serialization.load_ssh_public_key(line.strip())
    assert isinstance(key, Ed25519PublicKey) and key.public_bytes(*RAW) == ED_PK
    assert encode_public_key("ed25519", ED_PK, "openssh").count(b" ") == 1
    with pytest.raises(InvalidArgument, match="OpenSSH has no X25519"):
        encode_public_key("x25519", X_PK, "openssh")


def test_jwk() -> None:
    ed = json.loads(encode_public_key("ed25519", ED_PK, "jwk", kid="k#v1"))
    assert ed == {"kty": "OKP", "crv": "Ed25519", "x": ed["x"], "use": "sig", "kid": "k#v1"}
    assert _b64url_decode(ed["x"]) == ED_PK and "=" not in ed["x"]
    x = json.loads(encode_public_key("x25519", X_PK, "jwk"))
    assert x["crv"] == "X25519" and x["use"] == "enc" and "kid" not in x
    assert _b64url_decode(x["x"]) == X_PK


def test_refusals() -> None:
    for kind in ("xchacha20-poly1305", "hmac-sha256"):
        with pytest.raises(WrongKeyType, match="symmetric"):
            encode_public_key(kind, ED_PK, "raw")
    with pytest.raises(InvalidArgument, match="unknown public key format 'der'"):
        encode_public_key("ed25519", ED_PK, "der")
    with pytest.raises(InvalidArgument, match="32 bytes, got 31"):
        encode_public_key("ed25519", ED_PK[:31], "pem")
    assert FORMATS == ("raw", "pem", "openssh", "jwk")
