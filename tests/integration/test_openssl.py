"""A vault signature verifies with ``cryptography`` and with ``openssl pkeyutl``.

Both verifiers are independent of libsodium (OpenSSL's Ed25519 does the
checking in both), and both get only what a client gets: the PEM public key
the vault exports and the signature with the vault's 7-byte version header
stripped.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secretvault.api import framing
from secretvault.api.framing import Kind
from secretvault.backends import SlotAllocator
from secretvault.vault.keyring import Keyring
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import make_backend, open_ring

OPENSSL = shutil.which("openssl")
MESSAGES = [b"", b"hello from secretvault", bytes(range(256)) * 16]


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[Keyring]:
    alloc = SlotAllocator(make_backend("memfd_secret"))
    store = SQLiteStore(str(tmp_path / "keys.sqlite3"))
    r = open_ring(alloc, store)
    yield r
    r.close()
    store.close()
    alloc.close()


def _sign(ring: Keyring, message: bytes) -> bytes:
    _, token = ring.sign("ci/signer", message)
    _, sig = framing.unframe(Kind.SIGNATURE, token)
    return sig


@pytest.mark.memfd_secret
def test_verifies_with_cryptography(ring: Keyring) -> None:
    ring.create("ci/signer", "ed25519")
    key = serialization.load_pem_public_key(ring.public_key("ci/signer", fmt="pem"))
    assert isinstance(key, Ed25519PublicKey)
    for message in MESSAGES:
        sig = _sign(ring, message)
        key.verify(sig, message)
        with pytest.raises(InvalidSignature):
            key.verify(sig, message + b"!")
    # the OpenSSH export names the same key
    ssh = serialization.load_ssh_public_key(ring.public_key("ci/signer", fmt="openssh").strip())
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert isinstance(ssh, Ed25519PublicKey) and ssh.public_bytes(*raw) == key.public_bytes(*raw)


def _openssl_verify(pem: Path, message: Path, sig: Path) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin",
         "-in", str(message), "-sigfile", str(sig)],
        capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.memfd_secret
@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command (apt-get install openssl)")
def test_verifies_with_openssl_pkeyutl(ring: Keyring, tmp_path: Path) -> None:
    ring.create("ci/signer", "ed25519")
    pem = tmp_path / "signer.pem"
    pem.write_bytes(ring.public_key("ci/signer", fmt="pem"))
    # not the empty message: OpenSSL 3.0's pkeyutl -rawin cannot read an empty
    # file ("Could not allocate 0 bytes for oneshot sign/verify buffer")
    for i, message in enumerate(MESSAGES[1:]):
        msg = tmp_path / f"msg{i}"
        msg.write_bytes(message)
        sig = tmp_path / f"sig{i}"
        sig.write_bytes(_sign(ring, message))
        ok = _openssl_verify(pem, msg, sig)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Signature Verified Successfully" in ok.stdout

        # negative control: openssl really checks (a flipped bit fails)
        bad = bytearray(sig.read_bytes())
        bad[10] ^= 0x04
        sig.write_bytes(bytes(bad))
        refused = _openssl_verify(pem, msg, sig)
        assert refused.returncode != 0
        assert "Signature Verification Failure" in refused.stdout + refused.stderr

    # after a rotation, a v1 signature made before it still verifies against
    # the v1 PEM, and the exported PEM is now another key
    msg = tmp_path / "rot"
    msg.write_bytes(b"signed before the rotation")
    sig = tmp_path / "rot.sig"
    sig.write_bytes(_sign(ring, msg.read_bytes()))
    ring.rotate("ci/signer")
    ok = _openssl_verify(pem, msg, sig)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ring.public_key("ci/signer", 1, fmt="pem") == pem.read_bytes()
    assert ring.public_key("ci/signer", fmt="pem") != pem.read_bytes()
