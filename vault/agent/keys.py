"""Ed25519 in SSH's encodings (RFC 8709): the public key blob, the signature blob.

A key blob is ``string "ssh-ed25519" || string A`` (the 32-byte public key);
a signature blob ``string "ssh-ed25519" || string sig`` (64 bytes).  The
fingerprint is OpenSSH's: ``SHA256:`` and the unpadded base64 of the blob's
SHA-256.
"""

from __future__ import annotations

import base64
import hashlib

from secretvault.vault.agent.wire import Malformed, Reader, string

ED25519 = b"ssh-ed25519"
PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
#: ssh-ed25519's private part in ADD_IDENTITY: seed (32) || public key (32)
PRIVATE_BYTES = 64

_PREFIX = string(ED25519) + string(b"\0" * PUBLIC_BYTES)[:4]
_SIG_PREFIX = string(ED25519) + string(b"\0" * SIGNATURE_BYTES)[:4]


def key_blob(public: bytes) -> bytes:
    return _PREFIX + public


def public_of(blob: bytes) -> bytes:
    """The 32-byte public key of an Ed25519 key blob; :class:`Malformed` otherwise."""
    if len(blob) == len(_PREFIX) + PUBLIC_BYTES and blob.startswith(_PREFIX):
        return blob[len(_PREFIX):]
    r = Reader(blob)
    kind = r.string()
    if kind != ED25519:
        raise Malformed(f"not an Ed25519 key ({kind[:40]!r})")
    raise Malformed("an Ed25519 key blob holds one 32-byte public key")


def signature_blob(signature: bytes) -> bytes:
    return _SIG_PREFIX + signature


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).rstrip(b"=")
    return "SHA256:" + digest.decode("ascii")


def storable_fingerprint(blob: bytes) -> str:
    """The fingerprint in characters a vault key name may hold (base64url)."""
    return base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).rstrip(b"=").decode()
