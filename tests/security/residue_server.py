"""A vault server process for the residue test (tests/security/test_residue.py).

Run as ``python -m tests.security.residue_server DATA_DIR PASSPHRASE_FILE
[--leak]``.  It opens a vault the way the real server does (``open_vault``:
hardened process, memfd_secret backend, SQLite store, Argon2id passphrase
read from a file straight into secret memory — this process never holds the
passphrase in a Python object, and the test looks for it), then talks over
stdin/stdout, one JSON object per line:

1. prints ``{"import_public": hex}``;
2. reads ``{"wrapped": {type: hex}}``: each key sealed by the test to that
   import key (and, with ``--leak``, ``"plain": {type: hex}``);
3. imports the four keys through ``Keyring.import_wrapped``, performs
   thousands of sign/verify, MAC/verify, encrypt/decrypt and sealed-box
   decrypt operations, closes the vault, reopens it (every key is unsealed
   from the store again) and operates once more;
4. prints ``{"ready": ..., "signature": hex, "mac": hex}`` and waits for a
   line on stdin before it exits, so its memory can be scanned.

``--leak`` is the positive control: the process also keeps the plaintext
keys in Python ``bytes``, exactly what the vault must never do, and the
scan must find them.
"""

from __future__ import annotations

import gc
import json
import sys

from secretvault.api import framing
from secretvault.api.framing import Kind
from secretvault.backends import _sodium as na
from secretvault.vault.app import VaultConfig, open_vault
from secretvault.vault.sealing import Argon2Params

KDF = Argon2Params(ops=1, mem=8 << 20)
ROUNDS = 1500
NAMES = {
    "ed25519": "residue/ed25519",
    "x25519": "residue/x25519",
    "xchacha20-poly1305": "residue/xchacha",
    "hmac-sha256": "residue/hmac",
}

#: the positive control's copies (module level: alive until exit)
LEAKED: list[bytes] = []


def _send(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _exercise(vault_keyring: object, rounds: int) -> int:
    from secretvault.vault.keyring import Keyring

    ring = vault_keyring
    assert isinstance(ring, Keyring)
    box_pk = ring.public_key(NAMES["x25519"])
    ops = 0
    for i in range(rounds):
        msg = i.to_bytes(4, "big") * (1 + i % 16)
        _, sig = ring.sign(NAMES["ed25519"], msg)
        assert ring.verify(NAMES["ed25519"], msg, sig)
        _, tag = ring.mac(NAMES["hmac-sha256"], msg)
        assert ring.verify_mac(NAMES["hmac-sha256"], msg, tag)
        _, ct = ring.encrypt(NAMES["xchacha20-poly1305"], msg, b"ad")
        assert ring.decrypt(NAMES["xchacha20-poly1305"], ct, b"ad")[1] == msg
        box = framing.frame(Kind.SEALED_BOX, 1, na.crypto_box_seal(msg, box_pk))
        assert ring.decrypt(NAMES["x25519"], box)[1] == msg
        ops += 7
    return ops


def main() -> int:
    data_dir, passphrase_file = sys.argv[1], sys.argv[2]
    leak = "--leak" in sys.argv[3:]
    config = VaultConfig(
        data_dir=data_dir, backend="memfd_secret", passphrase_file=passphrase_file, kdf=KDF
    )
    vault = open_vault(config)
    _send({"import_public": vault.keyring.import_public_key.hex()})

    request = json.loads(sys.stdin.readline())
    if leak:
        LEAKED.extend(bytes.fromhex(v) for v in request["plain"].values())
    for key_type, wrapped in request["wrapped"].items():
        vault.keyring.import_wrapped(NAMES[key_type], key_type, bytes.fromhex(wrapped))
    del request

    ops = _exercise(vault.keyring, ROUNDS)
    # a restart: every key is unsealed from the store straight into slots again
    vault.close()
    vault = open_vault(config)
    ops += _exercise(vault.keyring, ROUNDS // 3)

    _, sig = vault.keyring.sign(NAMES["ed25519"], b"residue")
    _, tag = vault.keyring.mac(NAMES["hmac-sha256"], b"residue")
    gc.collect()
    _send({
        "ready": True,
        "operations": ops,
        "signature": framing.unframe(Kind.SIGNATURE, sig)[1].hex(),
        "mac": framing.unframe(Kind.MAC, tag)[1].hex(),
        "leaking": leak and len(LEAKED) == len(NAMES),
    })
    sys.stdin.readline()  # scanned while blocked here
    vault.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
