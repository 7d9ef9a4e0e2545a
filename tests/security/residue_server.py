"""A vault process for the residue test (tests/security/test_residue.py).

Run as ``python -m tests.security.residue_server DATA_DIR PASSPHRASE_FILE
[--leak] [--embedded]``.  It opens a vault the way the real server does
(``open_vault``: hardened process, memfd_secret backend, SQLite store,
Argon2id passphrase read from a file straight into secret memory — this
process never holds the passphrase in a Python object, and the test looks for
it), or with ``--embedded`` the way an application embedding the keyring does
(``secretvault.embedded.open_keyring`` and the public ``Keyring`` methods
only), then talks over stdin/stdout, one JSON object per line:

1. prints ``{"import_public": hex}``;
2. reads ``{"wrapped": {type: hex}}``: each key sealed by the test to that
   import key (and, with ``--leak``, ``"plain": {type: hex}``);
3. imports the four keys through ``import_wrapped``, performs
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

from secretvault import embedded
from secretvault.api import framing
from secretvault.api.framing import Kind
from secretvault.backends import _sodium as na
from secretvault.vault.app import Vault, VaultConfig, open_vault
from secretvault.vault.keyring import Keyring
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


class _Served:
    """The serving keyring's calls as the server's handlers make them: each
    returns the token the RPC would (the version is inside it)."""

    def __init__(self, ring: Keyring) -> None:
        self._ring = ring

    def sign(self, key: str, message: bytes) -> bytes:
        return self._ring.sign(key, message)[1]

    def verify(self, key: str, message: bytes, signature: bytes) -> bool:
        return self._ring.verify(key, message, signature)

    def mac(self, key: str, message: bytes) -> bytes:
        return self._ring.mac(key, message)[1]

    def verify_mac(self, key: str, message: bytes, tag: bytes) -> bool:
        return self._ring.verify_mac(key, message, tag)

    def encrypt(self, key: str, plaintext: bytes, aad: bytes) -> bytes:
        return self._ring.encrypt(key, plaintext, aad)[1]

    def decrypt(self, key: str, token: bytes, aad: bytes = b"") -> bytes:
        return self._ring.decrypt(key, token, aad)[1]

    def seal_to(self, key: str, message: bytes) -> bytes:
        box = na.crypto_box_seal(message, self._ring.public_key(key))
        return framing.frame(Kind.SEALED_BOX, 1, box)


Ops = _Served | embedded.Keyring


def _seal_to(ring: Ops, key: str, message: bytes) -> bytes:
    if isinstance(ring, _Served):
        return ring.seal_to(key, message)
    return ring.public_key(key).encrypt(message)  # as an application seals to its key


def _exercise(ring: Ops, rounds: int) -> int:
    ops = 0
    for i in range(rounds):
        msg = i.to_bytes(4, "big") * (1 + i % 16)
        sig = ring.sign(NAMES["ed25519"], msg)
        assert ring.verify(NAMES["ed25519"], msg, sig)
        tag = ring.mac(NAMES["hmac-sha256"], msg)
        assert ring.verify_mac(NAMES["hmac-sha256"], msg, tag)
        ct = ring.encrypt(NAMES["xchacha20-poly1305"], msg, b"ad")
        assert ring.decrypt(NAMES["xchacha20-poly1305"], ct, b"ad") == msg
        assert ring.decrypt(NAMES["x25519"], _seal_to(ring, NAMES["x25519"], msg)) == msg
        ops += 7
    return ops


class _Process:
    """Opens, reopens and closes the keys the way the server or an embedder does."""

    def __init__(self, data_dir: str, passphrase_file: str, *, embedded_mode: bool) -> None:
        self._config = VaultConfig(data_dir=data_dir, backend="memfd_secret",
                                   passphrase_file=passphrase_file, kdf=KDF)
        self._embedded = embedded_mode
        self._vault: Vault | None = None
        self.ring: Ops = self._open()

    def _open(self) -> Ops:
        if self._embedded:
            # the public API only (its own, default Argon2id cost: the test
            # reads the parameters back from the store)
            return embedded.open_keyring(self._config.data_dir,
                                         passphrase_file=self._config.passphrase_file)
        self._vault = open_vault(self._config)
        return _Served(self._vault.keyring)

    def import_public(self) -> bytes:
        if isinstance(self.ring, embedded.Keyring):
            return self.ring.import_key_public()
        assert self._vault is not None
        return self._vault.keyring.import_public_key

    def import_wrapped(self, name: str, key_type: str, wrapped: bytes) -> None:
        if isinstance(self.ring, embedded.Keyring):
            self.ring.import_wrapped(name, key_type, wrapped)
        else:
            assert self._vault is not None
            self._vault.keyring.import_wrapped(name, key_type, wrapped)

    def close(self) -> None:
        if isinstance(self.ring, embedded.Keyring):
            self.ring.close()
        elif self._vault is not None:
            self._vault.close()

    def reopen(self) -> None:
        self.close()
        self.ring = self._open()


def main() -> int:
    data_dir, passphrase_file = sys.argv[1], sys.argv[2]
    leak = "--leak" in sys.argv[3:]
    proc = _Process(data_dir, passphrase_file, embedded_mode="--embedded" in sys.argv[3:])
    _send({"import_public": proc.import_public().hex()})

    request = json.loads(sys.stdin.readline())
    if leak:
        LEAKED.extend(bytes.fromhex(v) for v in request["plain"].values())
    for key_type, wrapped in request["wrapped"].items():
        proc.import_wrapped(NAMES[key_type], key_type, bytes.fromhex(wrapped))
    del request

    ops = _exercise(proc.ring, ROUNDS)
    # a restart: every key is unsealed from the store straight into slots again
    proc.reopen()
    ops += _exercise(proc.ring, ROUNDS // 3)

    sig = proc.ring.sign(NAMES["ed25519"], b"residue")
    tag = proc.ring.mac(NAMES["hmac-sha256"], b"residue")
    gc.collect()
    _send({
        "ready": True,
        "operations": ops,
        "signature": framing.unframe(Kind.SIGNATURE, sig)[1].hex(),
        "mac": framing.unframe(Kind.MAC, tag)[1].hex(),
        "leaking": leak and len(LEAKED) == len(NAMES),
    })
    sys.stdin.readline()  # scanned while blocked here
    proc.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
