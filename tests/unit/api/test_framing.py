"""Token framing: every signature, ciphertext and MAC carries its key version."""

from __future__ import annotations

import pytest

from secretvault.api import framing
from secretvault.api.errors import MalformedCiphertext
from secretvault.api.framing import HEADER_SIZE, Kind, frame, unframe


@pytest.mark.parametrize("kind", list(Kind))
def test_round_trip(kind: Kind) -> None:
    for version in (1, 2, 0xFFFFFFFF):
        token = frame(kind, version, b"payload")
        assert unframe(kind, token) == (version, b"payload")


def test_layout() -> None:
    assert HEADER_SIZE == 7
    assert frame(Kind.SIGNATURE, 0x01020304, b"\xff") == b"SVS\x01\x02\x03\x04\xff"
    assert frame(Kind.AEAD, 1, b"")[:3] == b"SVA"
    assert frame(Kind.SEALED_BOX, 1, b"")[:3] == b"SVB"
    assert frame(Kind.MAC, 1, b"")[:3] == b"SVM"


def test_wrong_kind_names_both() -> None:
    with pytest.raises(MalformedCiphertext, match="expected a signature, got a MAC"):
        unframe(Kind.SIGNATURE, frame(Kind.MAC, 1, b"x"))
    with pytest.raises(MalformedCiphertext, match="unknown kind b'Z'"):
        unframe(Kind.AEAD, b"SVZ\x00\x00\x00\x01")


@pytest.mark.parametrize("token", [b"", b"SV", b"SVS\x00\x00\x00", b"XXS\x00\x00\x00\x01abc"])
def test_short_or_foreign(token: bytes) -> None:
    with pytest.raises(MalformedCiphertext, match="starts with 'SV'"):
        unframe(Kind.SIGNATURE, token)


def test_version_zero_does_not_exist() -> None:
    with pytest.raises(MalformedCiphertext, match="versions start at 1"):
        unframe(Kind.MAC, b"SVM\x00\x00\x00\x00" + bytes(32))


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("version", [1, 2, 255, 256, 257, 70_000, 2**32 - 1])
def test_cached_and_packed_headers_are_the_same(kind: Kind, version: int) -> None:
    """The first versions' headers are made once; every version's header is the packed one."""
    token = framing.frame(kind, version, b"payload")
    assert token == framing.HEADER.pack(framing.MAGIC, kind.value, version) + b"payload"
    assert framing.unframe(kind, token) == (version, b"payload")


@pytest.mark.parametrize(("kind", "size"), list(framing.PAYLOAD_BYTES.items()))
def test_exact_holds_a_signature_or_mac_to_its_length(kind: Kind, size: int) -> None:
    assert unframe(kind, frame(kind, 3, bytes(size)), exact=True) == (3, bytes(size))
    for n in (0, size - 1, size + 1):
        with pytest.raises(MalformedCiphertext, match=f"is {size} bytes after its 7-byte "
                           f"header, got {n}"):
            unframe(kind, frame(kind, 3, bytes(n)), exact=True)
    # the variable-length kinds have no one length to hold them to
    assert unframe(Kind.AEAD, frame(Kind.AEAD, 1, b"x"), exact=True) == (1, b"x")
