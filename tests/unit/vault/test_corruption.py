"""Wrong unseal material, corrupted records and tampered associated data.

Each failure must be a clear error that names the key (or says the
passphrase is wrong), change nothing, and leave the rest of the keyring
serving.  Tampering is done the way an attacker with the file would: with
SQLite directly, beside the store's own connection.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from secretvault.api import framing
from secretvault.api.errors import ImportKeyUnavailable, IntegrityError, WrongPassphrase
from secretvault.api.framing import Kind
from secretvault.backends import SlotAllocator
from secretvault.vault.keyring import Keyring
from secretvault.vault.keys import MAX_NAME_LEN
from secretvault.vault.sealing import UnsealSource, create_key_file
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import PASSPHRASE, open_ring, wrap


def _sql(path: str, *statements: str) -> None:
    db = sqlite3.connect(path)  # no foreign keys here: an attacker's edit
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


def _dump(path: str) -> list[str]:
    db = sqlite3.connect(path)
    lines = list(db.iterdump())
    db.close()
    return lines


def _populate(ring: Keyring) -> dict[str, bytes]:
    """One key of each type (two versions of 'sig'), and a token made by each."""
    ring.create("sig", "ed25519")
    ring.rotate("sig")
    ring.create("sig2", "ed25519")
    ring.create("enc", "xchacha20-poly1305")
    ring.create("mac", "hmac-sha256")
    ring.create("box", "x25519")
    return {
        "sig": ring.sign("sig", b"m")[1],
        "sig2": ring.sign("sig2", b"m")[1],
        "enc": ring.encrypt("enc", b"pt")[1],
        "mac": ring.mac("mac", b"m")[1],
    }


def _rest_works(ring: Keyring, tokens: dict[str, bytes], skip: set[str]) -> None:
    if "sig" not in skip:
        assert ring.verify("sig", b"m", tokens["sig"])
    if "sig2" not in skip:
        assert ring.verify("sig2", b"m", tokens["sig2"])
    if "enc" not in skip:
        assert ring.decrypt("enc", tokens["enc"]) == (1, b"pt")
    if "mac" not in skip:
        assert ring.verify_mac("mac", b"m", tokens["mac"])
    if "box" not in skip:
        ring.public_key("box")


# --- wrong unseal material ------------------------------------------------------


def test_wrong_passphrase_changes_nothing(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str
) -> None:
    ring = open_ring(allocator, store)
    tokens = _populate(ring)
    ring.close()
    store.close()
    before_dump = _dump(store_path)
    before_file = hashlib.sha256(Path(store_path).read_bytes()).hexdigest()

    s = SQLiteStore(store_path)
    with pytest.raises(WrongPassphrase, match="passphrase does not unseal this store"):
        open_ring(allocator, s, UnsealSource(passphrase=b"not the passphrase"))
    with pytest.raises(WrongPassphrase, match="unsealed with a passphrase, but a keyfile"):
        open_ring(allocator, s, UnsealSource(key_file="/nonexistent"))
    s.close()
    assert _dump(store_path) == before_dump
    assert hashlib.sha256(Path(store_path).read_bytes()).hexdigest() == before_file

    s = SQLiteStore(store_path)
    ring = open_ring(allocator, s)
    _rest_works(ring, tokens, set())
    ring.close()
    s.close()


def test_wrong_key_file(tmp_path: Path, allocator: SlotAllocator, store: SQLiteStore) -> None:
    right, wrong = str(tmp_path / "right.key"), str(tmp_path / "wrong.key")
    create_key_file(right, allocator)
    create_key_file(wrong, allocator)
    ring = open_ring(allocator, store, UnsealSource(key_file=right))
    ring.create("k", "ed25519")
    ring.close()
    with pytest.raises(WrongPassphrase, match="keyfile does not unseal this store"):
        open_ring(allocator, store, UnsealSource(key_file=wrong))
    with pytest.raises(WrongPassphrase, match="unsealed with a keyfile, but a passphrase"):
        open_ring(allocator, store, UnsealSource(passphrase=PASSPHRASE))
    ring = open_ring(allocator, store, UnsealSource(key_file=right))
    assert ring.sign("k", b"m")[0] == 1
    ring.close()


# --- corrupted and tampered records ----------------------------------------------------

Tamper = Callable[[str], None]


def _flip_sealed(path: str) -> None:
    db = sqlite3.connect(path)
    (sealed,) = db.execute(
        "SELECT sealed FROM key_versions WHERE name = 'enc' AND version = 1"
    ).fetchone()
    bad = bytearray(sealed)
    bad[len(bad) // 2] ^= 0x01
    db.execute(
        "UPDATE key_versions SET sealed = ? WHERE name = 'enc' AND version = 1", (bytes(bad),)
    )
    db.commit()
    db.close()


CASES: dict[str, tuple[Tamper, str, Callable[[Keyring, dict[str, bytes]], object], str]] = {
    # id: (tamper, damaged key, operation on it, expected message fragment)
    "flipped-ciphertext-bit": (
        _flip_sealed,
        "enc",
        lambda r, t: r.decrypt("enc", t["enc"]),
        "key 'enc' version 1: sealed record failed authentication",
    ),
    "flipped-nonce": (
        lambda p: _sql(p, "UPDATE key_versions SET nonce = zeroblob(24) WHERE name = 'mac'"),
        "mac",
        lambda r, t: r.mac("mac", b"m"),
        "key 'mac' version 1: sealed record failed authentication",
    ),
    "truncated-record": (
        lambda p: _sql(p, "UPDATE key_versions SET sealed = substr(sealed, 1, 20) "
                          "WHERE name = 'enc'"),
        "enc",
        lambda r, t: r.encrypt("enc", b"m"),
        "key 'enc' version 1: sealed record holds 4 bytes; a xchacha20-poly1305 key is 32",
    ),
    "extended-record": (
        # longer than any slot: must damage this record only, not abort the unseal
        lambda p: _sql(p, "UPDATE key_versions SET sealed = CAST(sealed || zeroblob(400) "
                          "AS BLOB) WHERE name = 'mac'"),
        "mac",
        lambda r, t: r.verify_mac("mac", b"m", t["mac"]),
        "key 'mac' version 1: sealed record holds 432 bytes",
    ),
    "record-rewritten-as-text": (
        # blob || blob is TEXT in SQLite: not valid UTF-8, and not a blob any more
        lambda p: _sql(p, "UPDATE key_versions SET sealed = sealed || zeroblob(1) "
                          "WHERE name = 'mac'"),
        "mac",
        lambda r, t: r.verify_mac("mac", b"m", t["mac"]),
        "key 'mac' version 1: sealed record failed authentication",
    ),
    "renamed-key": (
        # the record of 'sig2' moved under a new name, consistently in both tables
        lambda p: _sql(p, "UPDATE keys SET name = 'sig3' WHERE name = 'sig2'",
                          "UPDATE key_versions SET name = 'sig3' WHERE name = 'sig2'"),
        "sig3",
        lambda r, t: r.sign("sig3", b"m"),
        "key 'sig3' version 1: sealed record failed authentication",
    ),
    "swapped-names": (
        lambda p: _sql(
            p,
            # sig v2's record now claims to be sig2 v1, and the other way round
            "UPDATE key_versions SET name = 'tmp', version = 1 "
            "WHERE name = 'sig' AND version = 2",
            "UPDATE key_versions SET name = 'sig', version = 2 WHERE name = 'sig2'",
            "UPDATE key_versions SET name = 'sig2' WHERE name = 'tmp'",
        ),
        "sig2",
        lambda r, t: r.sign("sig2", b"m"),
        "key 'sig2' version 1: sealed record failed authentication",
    ),
    "swapped-versions": (
        lambda p: _sql(
            p,
            "UPDATE key_versions SET version = 99 WHERE name = 'sig' AND version = 1",
            "UPDATE key_versions SET version = 1 WHERE name = 'sig' AND version = 2",
            "UPDATE key_versions SET version = 2 WHERE name = 'sig' AND version = 99",
        ),
        "sig",
        lambda r, t: r.sign("sig", b"m"),
        "key 'sig' version 2: sealed record failed authentication",
    ),
    "type-changed-to-another-type": (
        # an Ed25519 key relabelled HMAC: the caller still asks for a signature
        lambda p: _sql(p, "UPDATE keys SET type = 'hmac-sha256' WHERE name = 'sig2'"),
        "sig2",
        lambda r, t: r.sign("sig2", b"m"),
        "key 'sig2' version 1:",
    ),
    "type-changed-same-size": (
        # a 32-byte XChaCha key relabelled HMAC (the same length): used as HMAC
        lambda p: _sql(p, "UPDATE keys SET type = 'hmac-sha256' WHERE name = 'enc'"),
        "enc",
        lambda r, t: r.mac("enc", b"m"),
        "key 'enc' version 1: sealed record failed authentication",
    ),
    "type-changed-decrypt": (
        # an XChaCha key relabelled X25519: decrypt of its ciphertext
        lambda p: _sql(p, "UPDATE keys SET type = 'x25519' WHERE name = 'enc'"),
        "enc",
        lambda r, t: r.decrypt("enc", t["enc"]),
        "key 'enc' version 1:",
    ),
    "unknown-type": (
        lambda p: _sql(p, "UPDATE keys SET type = 'rsa' WHERE name = 'mac'"),
        "mac",
        lambda r, t: r.mac("mac", b"m"),
        "key 'mac' version 1: unknown key type 'rsa'",
    ),
    "public-key-replaced": (
        lambda p: _sql(p, "UPDATE key_versions SET public_key = zeroblob(32) "
                          "WHERE name = 'box'"),
        "box",
        lambda r, t: r.public_key("box"),
        "key 'box' version 1: stored public key does not match",
    ),
    # --- rows whose plain (unsealed) fields do not parse: the key is damaged,
    # the load goes on
    "labels-not-json": (
        lambda p: _sql(p, "UPDATE keys SET labels = '{\"team\": ' WHERE name = 'enc'"),
        "enc",
        lambda r, t: r.decrypt("enc", t["enc"]),
        "key 'enc' version 1: its stored record does not parse (its labels are not valid "
        "JSON)",
    ),
    "labels-not-utf8": (
        lambda p: _sql(p, "UPDATE keys SET labels = CAST(x'7b22ff223a2278227d' AS TEXT) "
                          "WHERE name = 'mac'"),
        "mac",
        lambda r, t: r.verify_mac("mac", b"m", t["mac"]),
        "key 'mac' version 1: its stored record does not parse (its labels are not valid "
        "JSON)",
    ),
    "labels-not-an-object": (
        lambda p: _sql(p, "UPDATE keys SET labels = '[1, 2]' WHERE name = 'sig2'"),
        "sig2",
        lambda r, t: r.sign("sig2", b"m"),
        "key 'sig2' version 1: its stored record does not parse (its labels are not a JSON "
        "object of strings)",
    ),
    "created-not-a-number": (
        lambda p: _sql(p, "UPDATE keys SET created = 'yesterday' WHERE name = 'sig2'"),
        "sig2",
        lambda r, t: r.verify("sig2", b"m", t["sig2"]),
        "key 'sig2' version 1: its stored record does not parse (its created time "
        "'yesterday' is not a number)",
    ),
    "primary-version-not-a-number": (
        lambda p: _sql(p, "UPDATE keys SET primary_version = 'two' WHERE name = 'sig'"),
        "sig",
        lambda r, t: r.sign("sig", b"m"),
        "its primary version 'two' is not a version number",
    ),
    "type-not-utf8": (
        lambda p: _sql(p, "UPDATE keys SET type = CAST(x'ff' AS TEXT) WHERE name = 'box'"),
        "box",
        lambda r, t: r.public_key("box"),
        "key 'box': its stored record does not parse (its type is not valid UTF-8)",
    ),
    "name-not-utf8": (
        lambda p: _sql(p, "UPDATE keys SET name = CAST(x'73696732ff' AS TEXT) "
                          "WHERE name = 'sig2'",
                          "UPDATE key_versions SET name = CAST(x'73696732ff' AS TEXT) "
                          "WHERE name = 'sig2'"),
        "sig2\\xff",
        lambda r, t: r.sign("sig2\\xff", b"m"),
        "its name is not valid UTF-8",
    ),
    "version-number-not-a-number": (
        # the only version of 'mac' cannot be placed: the key is damaged as a whole
        lambda p: _sql(p, "UPDATE key_versions SET version = 'one' WHERE name = 'mac'"),
        "mac",
        lambda r, t: r.mac("mac", b"m"),
        "key 'mac': its stored record does not parse (a version record's number 'one' is "
        "not a version number)",
    ),
    "version-number-out-of-range": (
        lambda p: _sql(p, "UPDATE key_versions SET version = 4294967296 WHERE name = 'enc'"),
        "enc",
        lambda r, t: r.encrypt("enc", b"m"),
        "a version record's number 4294967296 is not a version number",
    ),
    "version-created-not-a-number": (
        # only that version is damaged (the key row is sound)
        lambda p: _sql(p, "UPDATE key_versions SET created = x'00' WHERE name = 'enc'"),
        "enc",
        lambda r, t: r.decrypt("enc", t["enc"]),
        "key 'enc' version 1: its stored record does not parse (its created time b'\\x00' "
        "is not a number)",
    ),
}


#: keys a case touches besides the one it checks
AFFECTED = {"renamed-key": {"sig2", "sig3"}, "swapped-names": {"sig", "sig2"},
            "name-not-utf8": {"sig2"}}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_record_names_the_key_and_the_rest_serves(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str, case: str
) -> None:
    tamper, damaged, operation, message = CASES[case]
    ring = open_ring(allocator, store)
    tokens = _populate(ring)
    ring.close()
    tamper(store_path)

    ring = open_ring(allocator, store)  # opens: one bad record does not stop the vault
    with pytest.raises(IntegrityError) as info:
        operation(ring, tokens)
    assert message in str(info.value)
    # the damage is reported by get/list as well
    info = ring.get(damaged)
    assert info.damaged or any(v.damaged for v in info.versions)
    assert damaged in ring.damaged_keys()
    # every other key still works
    _rest_works(ring, tokens, AFFECTED.get(case, {damaged}))
    # ...and so do new keys
    ring.create("fresh", "ed25519")
    assert ring.verify("fresh", b"m", ring.sign("fresh", b"m")[1])
    ring.close()


def test_a_signature_token_cannot_be_replayed_as_another_version(
    allocator: SlotAllocator, store: SQLiteStore
) -> None:
    ring = open_ring(allocator, store)
    _populate(ring)
    _, sig = framing.unframe(Kind.SIGNATURE, ring.sign("sig", b"m")[1])
    assert not ring.verify("sig", b"m", framing.frame(Kind.SIGNATURE, 1, sig))
    ring.close()


def test_a_damaged_key_may_be_deleted_but_not_changed(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str
) -> None:
    ring = open_ring(allocator, store)
    _populate(ring)
    ring.close()
    _sql(store_path, "UPDATE keys SET labels = 'nonsense' WHERE name = 'sig'")
    ring = open_ring(allocator, store)
    # a new version would be sealed under a type read from the damaged row
    with pytest.raises(IntegrityError, match="key 'sig': its stored record does not parse"):
        ring.rotate("sig")
    with pytest.raises(IntegrityError, match="key 'sig': its stored record does not parse"):
        ring.set_min_decryption_version("sig", 2)
    ring.delete("sig")
    ring.close()
    ring = open_ring(allocator, store)
    assert ring.damaged_keys() == {}
    ring.close()


# --- the store's metadata ---------------------------------------------------------


IMPORT_KEY_DAMAGE: dict[str, tuple[str, str]] = {
    # id: (SQL, expected fragment)
    "flipped-byte": (
        "UPDATE meta SET value = CAST(substr(value, 1, 40) || x'00' || substr(value, 42) "
        "AS BLOB) WHERE key = 'import_key'",
        "the vault's sealed import key (the store's 'import_key' record) failed authentication",
    ),
    "truncated": (
        "UPDATE meta SET value = substr(value, 1, 10) WHERE key = 'import_key'",
        "failed authentication",
    ),
    "deleted": (
        "DELETE FROM meta WHERE key = 'import_key'",
        "the store has no sealed import key record",
    ),
}


@pytest.mark.parametrize("case", list(IMPORT_KEY_DAMAGE))
def test_a_damaged_import_key_turns_off_wrapped_import_only(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str, case: str
) -> None:
    statement, message = IMPORT_KEY_DAMAGE[case]
    ring = open_ring(allocator, store)
    tokens = _populate(ring)
    pk = ring.import_public_key
    ring.close()
    _sql(store_path, statement)

    ring = open_ring(allocator, store)  # starts: only wrapped import needs that key
    assert ring.import_key_damage is not None and message in ring.import_key_damage
    with pytest.raises(ImportKeyUnavailable, match="wrapped import is unavailable") as info:
        ring.import_public_key  # the property is the call under test
    assert message in str(info.value)
    assert info.value.status == "FAILED_PRECONDITION"
    with pytest.raises(ImportKeyUnavailable, match="wrapped import is unavailable"):
        ring.import_wrapped("imported", "ed25519", wrap(pk, bytes(range(32))))
    assert "imported" not in {k.name for k in ring.list()}
    _rest_works(ring, tokens, set())
    ring.create("fresh", "x25519")
    ring.rotate("sig")
    ring.close()


KDF_DAMAGE: dict[str, bytes] = {
    "not-json": b"{argon2",
    "not-utf8": b"\xff\xfe",
    "not-an-object": b"[3, 67108864]",
    "missing-salt": b'{"alg": "argon2id13", "ops": 3, "mem": 67108864}',
    "salt-not-hex": b'{"alg": "argon2id13", "ops": 3, "mem": 67108864, "salt": "zz"}',
    "short-salt": b'{"alg": "argon2id13", "ops": 3, "mem": 67108864, "salt": "00ff"}',
    "negative-ops": (b'{"alg": "argon2id13", "ops": -1, "mem": 67108864, "salt": "'
                     + b"00" * 16 + b'"}'),
    "huge-mem": (b'{"alg": "argon2id13", "ops": 3, "mem": 99999999999999999, "salt": "'
                 + b"00" * 16 + b'"}'),
    "ops-as-text": (b'{"alg": "argon2id13", "ops": "3", "mem": 67108864, "salt": "'
                    + b"00" * 16 + b'"}'),
    "other-algorithm": (b'{"alg": "scrypt", "ops": 3, "mem": 67108864, "salt": "'
                        + b"00" * 16 + b'"}'),
}


@pytest.mark.parametrize("case", list(KDF_DAMAGE))
def test_unparseable_kdf_parameters_are_an_integrity_error_naming_them(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str, case: str
) -> None:
    ring = open_ring(allocator, store)
    _populate(ring)
    ring.close()
    db = sqlite3.connect(store_path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'kdf'", (KDF_DAMAGE[case],))
    db.commit()
    db.close()
    before = _dump(store_path)
    with pytest.raises(IntegrityError, match=r"the store's KDF parameters \(Argon2id, the "
                       r"'kdf' record\) do not parse"):
        open_ring(allocator, store)
    assert _dump(store_path) == before
    assert allocator.statistics().key_bytes == 0  # nothing left in secret memory


def test_an_unreadable_kek_source_is_a_clear_refusal(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str
) -> None:
    ring = open_ring(allocator, store)
    ring.close()
    _sql(store_path, "UPDATE meta SET value = x'ff' WHERE key = 'kek_source'")
    with pytest.raises(WrongPassphrase, match="unsealed with a"):
        open_ring(allocator, store)


# --- damaged names: every damaged key can be deleted --------------------------------


def _rowid(path: str, name: str) -> int:
    db = sqlite3.connect(path)
    (rowid,) = db.execute("SELECT rowid FROM keys WHERE name = ?", (name,)).fetchone()
    db.close()
    return int(rowid)


DAMAGED_NAMES: dict[str, tuple[str, Callable[[int], str]]] = {
    # id: (SQL on the key 'sig2', the name it is then listed and deleted under)
    # a TEXT PRIMARY KEY holds NULL in SQLite: named by its row, stable across restarts
    "null": ("UPDATE keys SET name = NULL WHERE name = 'sig2'", lambda r: f"damaged-row:{r}"),
    "not-utf8": ("UPDATE keys SET name = CAST(x'73696732ff' AS TEXT) WHERE name = 'sig2'",
                 lambda r: "sig2\\xff"),
    # a blob equal to the name's bytes: 'WHERE name = ?' with text never matches it
    "blob": ("UPDATE keys SET name = CAST('sig2' AS BLOB) WHERE name = 'sig2'",
             lambda r: "sig2"),
    # not UTF-8 and, escaped, over the 128 characters the edge lets through
    "long-not-utf8": ("UPDATE keys SET name = CAST(x'6b" + "ff" * 40 + "' AS TEXT) "
                      "WHERE name = 'sig2'", lambda r: f"damaged-row:{r}"),
    # over 128 characters (an edit by hand): unreachable through the edge as it is
    "too-long": ("UPDATE keys SET name = '" + "k" * 200 + "' WHERE name = 'sig2'",
                 lambda r: f"damaged-row:{r}"),
}


@pytest.mark.parametrize("case", list(DAMAGED_NAMES))
def test_a_key_with_a_damaged_name_is_listed_under_a_usable_name_and_deletable(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str, case: str
) -> None:
    statement, listed_as = DAMAGED_NAMES[case]
    ring = open_ring(allocator, store)
    tokens = _populate(ring)
    ring.close()
    rowid = _rowid(store_path, "sig2")
    _sql(store_path, statement)
    name = listed_as(rowid)

    ring = open_ring(allocator, store)
    assert name in [k.name for k in ring.list()]
    assert all(len(k.name) <= MAX_NAME_LEN for k in ring.list())  # the edge lets it through
    if case != "blob":  # a blob of the right bytes is the right name: it still works
        assert name in ring.damaged_keys()
    ring.delete(name)
    assert name not in [k.name for k in ring.list()]
    _rest_works(ring, tokens, {"sig2"})
    ring.close()
    # gone from the file: not listed again at the next start, nothing left damaged
    ring = open_ring(allocator, store)
    assert name not in [k.name for k in ring.list()]
    assert ring.damaged_keys() == {}
    db = sqlite3.connect(store_path)
    assert db.execute("SELECT count(*) FROM keys WHERE rowid = ?", (rowid,)).fetchone() == (0,)
    # and its sealed versions with it, whatever name they were left under
    assert db.execute("SELECT count(*) FROM key_versions WHERE name = 'sig2'"
                      ).fetchone() == (0,)
    db.close()
    _rest_works(ring, tokens, {"sig2"})
    ring.close()


def test_two_null_names_are_two_keys(
    allocator: SlotAllocator, store: SQLiteStore, store_path: str
) -> None:
    ring = open_ring(allocator, store)
    _populate(ring)
    ring.close()
    rows = [_rowid(store_path, "sig2"), _rowid(store_path, "mac")]
    _sql(store_path, "UPDATE keys SET name = NULL WHERE name IN ('sig2', 'mac')")
    ring = open_ring(allocator, store)
    names = [f"damaged-row:{r}" for r in rows]
    assert set(names) <= set(ring.damaged_keys())
    for n in names:
        ring.delete(n)
    assert ring.damaged_keys() == {}
    ring.close()
