"""Public-key encodings: raw, PEM, OpenSSH and JWK.

Only public bytes ever reach ``cryptography`` here; the server uses these to
answer GetPublicKey and the client uses them to export locally.
"""

from __future__ import annotations

import base64
from typing import Literal

from secretvault.api.errors import InvalidArgument, WrongKeyType

Format = Literal["raw", "pem", "openssh", "jwk"]
FORMATS: tuple[Format, ...] = ("raw", "pem", "openssh", "jwk")
ASYMMETRIC = ("ed25519", "x25519")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_public_key(
    key_type: str, public: bytes, fmt: str, *, comment: str = "", kid: str | None = None
) -> bytes:
    """Encode a 32-byte Ed25519 or X25519 public key in ``fmt``."""
    if key_type not in ASYMMETRIC:
        raise WrongKeyType(f"a {key_type} key is symmetric: it has no public key")
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown public key format {fmt!r}; use one of {', '.join(FORMATS)}")
    if len(public) != 32:
        raise InvalidArgument(f"a {key_type} public key is 32 bytes, got {len(public)}")
    if fmt == "raw":
        return public
    if fmt == "jwk":
        jwk: dict[str, str] = {
            "kty": "OKP",
            "crv": "Ed25519" if key_type == "ed25519" else "X25519",
            "x": _b64url(public),
            "use": "sig" if key_type == "ed25519" else "enc",
        }
        if kid:
            jwk["kid"] = kid
        import json  # only this encoding needs it (a CLI call starts without it)

        return json.dumps(jwk, sort_keys=True).encode("ascii")
    # cryptography loads only for the encodings that need it
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    key = (
        Ed25519PublicKey.from_public_bytes(public)
        if key_type == "ed25519"
        else X25519PublicKey.from_public_bytes(public)
    )
    if fmt == "pem":
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if key_type != "ed25519":
        raise InvalidArgument("OpenSSH has no X25519 key format; use pem, jwk or raw")
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + (b" " + comment.encode() if comment else b"") + b"\n"
