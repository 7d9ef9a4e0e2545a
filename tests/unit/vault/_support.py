"""Helpers shared by the vault tests (unit, integration and security).

Keys enter a keyring the way a client's do: sealed to the vault's import
public key with PyNaCl's high-level ``SealedBox`` (an implementation
independent of the vault's own pointer-level calls), then opened by
:meth:`Keyring.import_wrapped` straight into a slot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nacl.public import PublicKey, SealedBox

from secretvault.backends import MemfdSecretBackend, SecretMemoryBackend, SlotAllocator, _sodium
from secretvault.vault.keyring import Keyring
from secretvault.vault.sealing import Argon2Params, UnsealSource
from secretvault.vault.store import SQLiteStore

#: Argon2id at its cheapest that libsodium accepts for this test's purposes:
#: every test but the one of the default parameters uses it
FAST_KDF = Argon2Params(ops=1, mem=8 << 20)
PASSPHRASE = b"correct horse battery staple"
DATA = Path(__file__).resolve().parents[2] / "data"


def vectors(name: str) -> list[dict[str, Any]]:
    """The ``vectors`` list of ``tests/data/<name>.json``."""
    doc = json.loads((DATA / f"{name}.json").read_text())
    result: list[dict[str, Any]] = doc["vectors"]
    return result


def wrap(import_public_key: bytes, material: bytes) -> bytes:
    """What a client sends to import ``material``: a libsodium sealed box."""
    return SealedBox(PublicKey(import_public_key)).encrypt(material)


def raw(address: int, n: int) -> bytes:
    """Copy ``n`` bytes at ``address`` (tests only: key code never does this)."""
    return bytes(_sodium.ffi.buffer(_sodium.pointer(address), n))


def make_backend(kind: str) -> SecretMemoryBackend:
    if kind == "memfd_secret":
        return MemfdSecretBackend()
    from tests.unit.backends._backends import AnonymousBackend

    return AnonymousBackend()


def open_ring(
    allocator: SlotAllocator,
    store: SQLiteStore,
    source: UnsealSource | None = None,
    kdf: Argon2Params = FAST_KDF,
) -> Keyring:
    return Keyring.open(
        allocator, store, source or UnsealSource(passphrase=PASSPHRASE), kdf=kdf
    )
