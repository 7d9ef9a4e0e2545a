"""The framing of signatures, ciphertexts and MACs: they carry the key version.

Every token the vault returns starts with a 7-byte header::

    b"SV" | kind (1 byte) | key version (uint32, big-endian)

followed by the standard payload, unchanged:

==========  =====  ==========================================================
kind        byte   payload
==========  =====  ==========================================================
signature   ``S``  the 64-byte Ed25519 signature (RFC 8032)
aead        ``A``  24-byte nonce || XChaCha20-Poly1305-IETF ciphertext+tag
sealed box  ``B``  libsodium ``crypto_box_seal`` output (48 bytes + message)
mac         ``M``  the 32-byte HMAC-SHA-256
==========  =====  ==========================================================

so decrypt and verify pick the right key version, a signature cannot be fed
to decrypt by mistake, and stripping the header leaves bytes any libsodium,
OpenSSL or RFC implementation accepts.
"""

from __future__ import annotations

import enum
import struct

from secretvault.api.errors import MalformedCiphertext

MAGIC = b"SV"
HEADER = struct.Struct(">2scI")
HEADER_SIZE = HEADER.size  # 7


class Kind(enum.Enum):
    SIGNATURE = b"S"
    AEAD = b"A"
    SEALED_BOX = b"B"
    MAC = b"M"


_NAMES = {
    Kind.SIGNATURE: "a signature",
    Kind.AEAD: "an XChaCha20-Poly1305 ciphertext",
    Kind.SEALED_BOX: "a sealed box",
    Kind.MAC: "a MAC",
}


#: the payload length of the kinds whose payload has one length
PAYLOAD_BYTES = {Kind.SIGNATURE: 64, Kind.MAC: 32}

#: each kind's byte, looked up without the enum's ``value`` descriptor
_BYTE = {k: k.value for k in Kind}
#: the headers of the first versions, made once: framing is on every
#: operation's path, and packing a header cost a fifth of the overhead the
#: keyring adds to a libsodium signature (benchmarks/bench_embedded.py)
_CACHED_VERSIONS = 256
_HEADERS = {k: tuple(HEADER.pack(MAGIC, k.value, v) for v in range(_CACHED_VERSIONS))
            for k in Kind}


def frame(kind: Kind, version: int, payload: bytes) -> bytes:
    if 0 < version < _CACHED_VERSIONS:
        return _HEADERS[kind][version] + payload
    return HEADER.pack(MAGIC, _BYTE[kind], version) + payload


def unframe(kind: Kind, token: bytes, *, exact: bool = False) -> tuple[int, bytes]:
    """(key version, payload) of a token that must be of ``kind``.

    With ``exact``, a signature or MAC whose payload is not of its one length
    (:data:`PAYLOAD_BYTES`) is malformed too: it is not a token of that kind,
    so no verification can answer it.
    """
    if len(token) < HEADER_SIZE or token[:2] != MAGIC:
        if kind is Kind.SEALED_BOX:  # most often a bare crypto_box_seal output
            raise MalformedCiphertext(
                "expected a sealed box framed with the 7-byte header b'SVB' and the version "
                "of the public key it was sealed to (uint32, big-endian), then the "
                f"crypto_box_seal output; got {len(token)} bytes without that header "
                "(secretvault.clients.local.encrypt_to frames one)")
        raise MalformedCiphertext(
            f"expected {_NAMES[kind]} produced by secretvault (it starts with 'SV'); "
            f"got {len(token)} bytes without that header"
        )
    _, k, version = HEADER.unpack_from(token)
    if k != kind.value:
        try:
            got = _NAMES[Kind(k)]
        except ValueError:
            got = f"an unknown kind {k!r}"
        raise MalformedCiphertext(f"expected {_NAMES[kind]}, got {got}")
    if version == 0:
        raise MalformedCiphertext("key version 0 does not exist: versions start at 1")
    if exact and (size := PAYLOAD_BYTES.get(kind)) is not None \
            and len(token) - HEADER_SIZE != size:
        raise MalformedCiphertext(
            f"{_NAMES[kind]} is {size} bytes after its 7-byte header, got "
            f"{len(token) - HEADER_SIZE}")
    return version, token[HEADER_SIZE:]
