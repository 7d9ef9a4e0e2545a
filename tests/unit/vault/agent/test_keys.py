"""Ed25519 key and signature blobs, as OpenSSH encodes them."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest
from nacl.signing import SigningKey

from secretvault.api.pubkeys import encode_public_key
from secretvault.vault.agent import keys
from secretvault.vault.agent.wire import Malformed


def test_the_key_blob_is_the_openssh_public_keys() -> None:
    pk = bytes(SigningKey.generate().verify_key)
    line = encode_public_key("ed25519", pk, "openssh", comment="c").decode().split()
    assert base64.b64decode(line[1]) == keys.key_blob(pk)
    assert keys.public_of(keys.key_blob(pk)) == pk


@pytest.mark.parametrize("bad", [b"", b"\0\0\0\x07ssh-rsa\0\0\0\x01\x03",
                                 keys.key_blob(b"\1" * 32)[:-1],
                                 keys.key_blob(b"\1" * 32) + b"x"])
def test_anything_else_is_malformed(bad: bytes) -> None:
    with pytest.raises(Malformed):
        keys.public_of(bad)


def test_the_fingerprint_is_ssh_keygens(tmp_path: object) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed here: run scripts/install-ssh-deps")
    pk = bytes(SigningKey.generate().verify_key)
    line = encode_public_key("ed25519", pk, "openssh", comment="c").decode()
    out = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=line, capture_output=True,
                         text=True, check=True).stdout.split()[1]
    assert keys.fingerprint(keys.key_blob(pk)) == out
    assert "/" not in keys.storable_fingerprint(keys.key_blob(pk))


def test_the_signature_blob() -> None:
    assert keys.signature_blob(b"\2" * 64) == (b"\0\0\0\x0bssh-ed25519\0\0\0\x40" + b"\2" * 64)
