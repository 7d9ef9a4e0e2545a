"""Key rows are authenticated: a row MAC over the row and its set of versions.

Each version's sealed record binds only store id, name, version and type;
the row MAC covers the rest (created time, primary and minimum decryption
version, labels) and which version records exist.  Tampering is done the
way an attacker with the file would: with SQLite directly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

from secretvault.api.errors import IntegrityError, WrongPassphrase
from secretvault.backends import SlotAllocator
from secretvault.backends import _sodium as na
from secretvault.vault import sealing
from secretvault.vault.keyring import Keyring
from secretvault.vault.sealing import Argon2Params, Kek, UnsealSource
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import PASSPHRASE, open_ring


def _sql(path: str, *statements: str) -> None:
    db = sqlite3.connect(path)  # an attacker's edit, beside the store's connection
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


def _rows(path: str, query: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    rows = db.execute(query).fetchall()
    db.close()
    return rows


def _populate(ring: Keyring) -> dict[str, bytes]:
    """'rot': rotated twice, minimum decryption version 2; 'lab': labelled;
    'mac', 'enc': one version each.  A token made by each."""
    ring.create("rot", "ed25519")
    old = ring.sign("rot", b"m")[1]
    ring.rotate("rot")
    mid = ring.sign("rot", b"m")[1]
    ring.rotate("rot")
    ring.set_min_decryption_version("rot", 2)
    ring.create("lab", "ed25519", labels={"team": "ci", "env": "prod"})
    ring.create("mac", "hmac-sha256")
    ring.create("enc", "xchacha20-poly1305")
    return {
        "rot-v1": old,
        "rot-v2": mid,
        "rot": ring.sign("rot", b"m")[1],
        "lab": ring.sign("lab", b"m")[1],
        "mac": ring.mac("mac", b"m")[1],
        "enc": ring.encrypt("enc", b"pt")[1],
    }


def _works(ring: Keyring, tokens: dict[str, bytes], *skip: str) -> None:
    if "rot" not in skip:
        assert ring.verify("rot", b"m", tokens["rot"])
        assert ring.verify("rot", b"m", tokens["rot-v2"])
        assert ring.sign("rot", b"m")[0] == 3
    if "lab" not in skip:
        assert ring.verify("lab", b"m", tokens["lab"])
    if "mac" not in skip:
        assert ring.verify_mac("mac", b"m", tokens["mac"])
    if "enc" not in skip:
        assert ring.decrypt("enc", tokens["enc"]) == (1, b"pt")


Op = Callable[[Keyring, dict[str, bytes]], object]

TAMPER: dict[str, tuple[list[str], str, Op]] = {
    # id: (SQL, the key it damages, an operation on that key)
    "rotation-rolled-back": (
        ["UPDATE keys SET primary_version = 2 WHERE name = 'rot'"],
        "rot", lambda r, t: r.sign("rot", b"m")),
    "min-decryption-lowered": (
        ["UPDATE keys SET min_decryption_version = 1 WHERE name = 'rot'"],
        "rot", lambda r, t: r.verify("rot", b"m", t["rot-v1"])),
    "labels-edited": (
        ["UPDATE keys SET labels = '{\"env\": \"prod\", \"team\": \"ops\"}' "
         "WHERE name = 'lab'"],
        "lab", lambda r, t: r.sign("lab", b"m")),
    "labels-removed": (
        ["UPDATE keys SET labels = '{}' WHERE name = 'lab'"],
        "lab", lambda r, t: r.verify("lab", b"m", t["lab"])),
    "created-changed": (
        ["UPDATE keys SET created = created - 86400 WHERE name = 'mac'"],
        "mac", lambda r, t: r.mac("mac", b"m")),
    "version-created-changed": (
        ["UPDATE key_versions SET created = created + 1 WHERE name = 'enc'"],
        "enc", lambda r, t: r.decrypt("enc", t["enc"])),
    "old-version-deleted": (
        ["DELETE FROM key_versions WHERE name = 'rot' AND version = 2"],
        "rot", lambda r, t: r.sign("rot", b"m")),
    "newest-version-deleted-and-rolled-back": (
        # a whole rotation undone consistently within the row: still caught
        ["DELETE FROM key_versions WHERE name = 'rot' AND version = 3",
         "UPDATE keys SET primary_version = 2 WHERE name = 'rot'"],
        "rot", lambda r, t: r.verify("rot", b"m", t["rot-v2"])),
    "row-mac-removed": (
        ["UPDATE keys SET row_mac = NULL WHERE name = 'mac'"],
        "mac", lambda r, t: r.verify_mac("mac", b"m", t["mac"])),
    "row-mac-of-another-key": (
        ["UPDATE keys SET row_mac = (SELECT row_mac FROM keys WHERE name = 'lab') "
         "WHERE name = 'enc'"],
        "enc", lambda r, t: r.encrypt("enc", b"x")),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_key_row_is_damaged_and_named_the_rest_serves(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str, case: str
) -> None:
    statements, damaged, operation = TAMPER[case]
    ring = open_ring(allocator, store)
    tokens = _populate(ring)
    ring.close()
    _sql(store_path, *statements)

    ring = open_ring(allocator, store)
    with pytest.raises(IntegrityError) as info:
        operation(ring, tokens)
    text = str(info.value)
    assert f"key {damaged!r}" in text
    assert "its metadata failed authentication" in text
    info_ = ring.get(damaged)
    assert info_.damaged is not None and "failed authentication" in info_.damaged
    assert all(v.damaged for v in info_.versions)  # no version is served
    assert "failed authentication" in ring.damaged_keys()[damaged]
    assert list(ring.damaged_keys()) == [damaged]
    _works(ring, tokens, damaged)
    # a damaged key cannot be changed (a new MAC would vouch for the edit)...
    changes: list[Callable[[], object]] = [
        lambda: ring.rotate(damaged),
        lambda: ring.set_min_decryption_version(damaged, 1),
        lambda: ring.delete_version(damaged, 1),
    ]
    for change in changes:
        with pytest.raises(IntegrityError, match="its metadata failed authentication"):
            change()
    # ...only deleted; new keys work
    ring.delete(damaged)
    ring.create("fresh", "ed25519")
    ring.close()
    assert allocator.statistics().key_bytes == 0  # every slot was freed

    ring = open_ring(allocator, store)
    assert ring.damaged_keys() == {}
    _works(ring, tokens, damaged)
    ring.close()


def test_an_old_sealed_record_of_the_same_name_and_version_is_refused(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str
) -> None:
    """The AEAD alone accepts a deleted key's v1 record under a new key of
    that name and type; the row MAC covers the sealed bytes and refuses it."""
    ring = open_ring(allocator, store)
    ring.create("k", "hmac-sha256")
    old_tag = ring.mac("k", b"m")[1]
    ring.close()
    old = _rows(store_path, "SELECT created, public_key, nonce, sealed FROM key_versions "
                            "WHERE name = 'k'")[0]
    ring = open_ring(allocator, store)
    ring.delete("k")
    ring.create("k", "hmac-sha256")
    assert not ring.verify_mac("k", b"m", old_tag)
    ring.close()
    db = sqlite3.connect(store_path)
    db.execute("UPDATE key_versions SET created = ?, public_key = ?, nonce = ?, sealed = ? "
               "WHERE name = 'k' AND version = 1", old)
    db.commit()
    db.close()

    ring = open_ring(allocator, store)
    with pytest.raises(IntegrityError, match="key 'k' version 1: its metadata failed"):
        ring.verify_mac("k", b"m", old_tag)
    ring.close()


def test_every_mutation_keeps_the_row_mac_valid(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str
) -> None:
    ring = open_ring(allocator, store)
    tokens = _populate(ring)
    ring.rotate("lab")
    ring.delete_version("rot", 1)
    ring.set_min_decryption_version("lab", 2)
    ring.close()
    ring = open_ring(allocator, store)
    assert ring.damaged_keys() == {}
    assert [v.version for v in ring.get("rot").versions] == [2, 3]
    assert ring.get("lab").min_decryption_version == 2
    _works(ring, tokens, "lab")
    ring.close()
    assert all(isinstance(mac, bytes) and len(mac) == 32
               for (mac,) in _rows(store_path, "SELECT row_mac FROM keys"))


def _make_old_format(allocator: SlotAllocator, store: SQLiteStore, store_path: str) -> None:
    """Turn the store into one written before row MACs: no row_mac column,
    and a KEK check with the v1 associated data (made under the real KEK)."""
    kdf = store.get_meta("kdf")
    assert kdf is not None
    kek = Kek.derive(allocator, UnsealSource(passphrase=PASSPHRASE),
                     Argon2Params.from_json(kdf))
    try:
        nonce = na.random_bytes(na.AEAD_XCHACHA_NPUBBYTES)
        check = nonce + na.aead_xchacha_encrypt(
            kek._slot.ptr, nonce, b"", sealing._CHECK_AD)  # the v1 check
    finally:
        kek.close()
    db = sqlite3.connect(store_path)
    db.execute("ALTER TABLE keys DROP COLUMN row_mac")
    db.execute("UPDATE meta SET value = ? WHERE key = 'kek_check'", (check,))
    db.execute("UPDATE meta SET value = x'31' WHERE key = 'format'")
    db.commit()
    db.close()


def test_an_old_format_store_opens_and_gets_row_macs(
    allocator: SlotAllocator, store_path: str
) -> None:
    store = SQLiteStore(store_path)
    ring = open_ring(allocator, store)
    tokens = _populate(ring)
    ring.close()
    _make_old_format(allocator, store, store_path)
    store.close()
    columns = [r[1] for r in _rows(store_path, "PRAGMA table_info(keys)")]
    assert "row_mac" not in columns

    # a wrong passphrase on the old store changes nothing (the column stays out)
    store = SQLiteStore(store_path)
    with pytest.raises(WrongPassphrase):
        open_ring(allocator, store, UnsealSource(passphrase=b"wrong"))
    assert "row_mac" not in [r[1] for r in _rows(store_path, "PRAGMA table_info(keys)")]

    ring = open_ring(allocator, store)  # migrates
    assert ring.damaged_keys() == {}
    _works(ring, tokens)
    ring.close()
    store.close()
    macs = _rows(store_path, "SELECT name, row_mac FROM keys ORDER BY name")
    assert [n for n, _ in macs] == ["enc", "lab", "mac", "rot"]
    assert all(isinstance(m, bytes) and len(m) == 32 for _, m in macs)
    assert _rows(store_path, "SELECT value FROM meta WHERE key = 'format'") == [(b"2",)]

    # the MACs written are real ones, and the store now requires them
    store = SQLiteStore(store_path)
    ring = open_ring(allocator, store)
    assert ring.damaged_keys() == {}
    ring.close()
    _sql(store_path, "UPDATE keys SET primary_version = 2 WHERE name = 'rot'",
         "UPDATE keys SET row_mac = NULL WHERE name = 'mac'")
    ring = open_ring(allocator, store)
    assert set(ring.damaged_keys()) == {"rot", "mac"}
    assert "has no row MAC" in ring.damaged_keys()["mac"]
    _works(ring, tokens, "rot", "mac")
    ring.close()
    store.close()


def test_a_new_store_starts_with_the_current_format(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str
) -> None:
    open_ring(allocator, store).close()
    assert store.get_meta("format") == b"2"
    assert "row_mac" in [r[1] for r in _rows(store_path, "PRAGMA table_info(keys)")]
