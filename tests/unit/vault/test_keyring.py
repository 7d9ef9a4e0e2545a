"""The keyring: names, versions, rotation, minimum decryption version, deletion."""

from __future__ import annotations

import threading

import pytest
from nacl.public import PublicKey, SealedBox
from nacl.signing import SigningKey

from secretvault.api import framing
from secretvault.api.errors import (
    FailedPrecondition,
    InvalidArgument,
    InvalidImport,
    InvalidKeyName,
    KeyExists,
    KeyNotFound,
    MalformedCiphertext,
    StoreSealed,
    VersionBelowMinimum,
    VersionNotFound,
)
from secretvault.api.framing import Kind
from secretvault.backends import SlotAllocator
from secretvault.vault.keyring import Keyring
from secretvault.vault.keys import validate_name
from secretvault.vault.sealing import UnsealSource
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import PASSPHRASE, open_ring, raw, wrap


def _reopen(ring: Keyring, allocator: SlotAllocator, store: SQLiteStore) -> Keyring:
    ring.close()
    return open_ring(allocator, store)


# --- names and labels --------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "A9", "team/signing-key_1.v2", "x" * 128, "0/1/2", "a.b..c"]
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 129, "-lead", ".hidden", "/abs", "a/", "a//b", "a/./b", "a/../b", "a b", "é",
     "a\x00", "a\n", "a*", "team/*"],
)
def test_invalid_names(ring: Keyring, name: str) -> None:
    with pytest.raises(InvalidKeyName, match="1-128 characters"):
        ring.create(name, "ed25519")
    # lookups of a malformed name say it is malformed, not merely missing
    with pytest.raises(InvalidKeyName):
        ring.sign(name, b"m")


def test_labels_are_validated_and_kept(
    ring: Keyring, allocator: SlotAllocator, store: SQLiteStore
) -> None:
    with pytest.raises(InvalidArgument, match="at most 32 labels"):
        ring.create("k", "ed25519", {str(i): "v" for i in range(33)})
    with pytest.raises(InvalidArgument, match="label keys"):
        ring.create("k", "ed25519", {"": "v"})
    with pytest.raises(InvalidArgument, match="label keys"):
        ring.create("k", "ed25519", {"k": "v" * 257})
    ring.create("k", "ed25519", {"team": "payments", "env": "prod"})
    ring = _reopen(ring, allocator, store)
    assert ring.get("k").labels == {"team": "payments", "env": "prod"}
    ring.close()


def test_create_twice_is_refused_and_changes_nothing(ring: Keyring) -> None:
    first = ring.create("k", "ed25519")
    with pytest.raises(KeyExists, match="'k'"):
        ring.create("k", "hmac-sha256")
    assert ring.get("k") == first


def test_missing_key(ring: Keyring) -> None:
    with pytest.raises(KeyNotFound, match="no key named 'nope'"):
        ring.sign("nope", b"m")
    with pytest.raises(KeyNotFound):
        ring.get("nope")
    with pytest.raises(KeyNotFound):
        ring.rotate("nope")
    with pytest.raises(KeyNotFound):
        ring.delete("nope")


def test_list_and_counts(ring: Keyring) -> None:
    for name, kind in [("a/1", "ed25519"), ("a/2", "x25519"), ("b", "hmac-sha256")]:
        ring.create(name, kind)
    assert [k.name for k in ring.list()] == ["a/1", "a/2", "b"]
    assert [k.name for k in ring.list("a/")] == ["a/1", "a/2"]
    assert ring.counts_by_type() == {
        "ed25519": 1, "x25519": 1, "xchacha20-poly1305": 0, "hmac-sha256": 1
    }


# --- versions ----------------------------------------------------------------------


def test_rotation_keeps_old_versions_for_verify_and_decrypt(
    ring: Keyring, allocator: SlotAllocator, store: SQLiteStore
) -> None:
    ring.create("sig", "ed25519")
    ring.create("enc", "xchacha20-poly1305")
    ring.create("mac", "hmac-sha256")
    ring.create("box", "x25519")
    old_sig = ring.sign("sig", b"m")[1]
    old_ct = ring.encrypt("enc", b"secret", b"ad")[1]
    old_mac = ring.mac("mac", b"m")[1]
    old_pk = ring.public_key("box")
    old_box = framing.frame(Kind.SEALED_BOX, 1, SealedBox(PublicKey(old_pk)).encrypt(b"b1"))

    for name in ("sig", "enc", "mac", "box"):
        info = ring.rotate(name)
        assert info.primary_version == 2
        assert [v.version for v in info.versions] == [1, 2]

    # new tokens carry version 2, old ones still work with version 1
    assert ring.sign("sig", b"m")[0] == 2
    assert ring.sign("sig", b"m")[1] != old_sig
    assert ring.encrypt("enc", b"x")[0] == 2
    assert ring.mac("mac", b"m")[1] != old_mac
    assert ring.public_key("box") != old_pk
    assert ring.public_key("box", 1) == old_pk

    ring = _reopen(ring, allocator, store)
    assert ring.verify("sig", b"m", old_sig)
    assert ring.verify("sig", b"m", ring.sign("sig", b"m")[1])
    assert ring.decrypt("enc", old_ct, b"ad") == (1, b"secret")
    assert ring.verify_mac("mac", b"m", old_mac)
    assert ring.decrypt("box", old_box) == (1, b"b1")
    # the version in the token selects the key: relabelling a v1 signature as v2 fails
    _, sig = framing.unframe(Kind.SIGNATURE, old_sig)
    assert not ring.verify("sig", b"m", framing.frame(Kind.SIGNATURE, 2, sig))
    with pytest.raises(VersionNotFound, match="'sig' has no version 3"):
        ring.verify("sig", b"m", framing.frame(Kind.SIGNATURE, 3, sig))
    ring.close()


def test_min_decryption_version(
    ring: Keyring, allocator: SlotAllocator, store: SQLiteStore
) -> None:
    ring.create("enc", "xchacha20-poly1305")
    ct1 = ring.encrypt("enc", b"one")[1]
    ring.rotate("enc")
    ct2 = ring.encrypt("enc", b"two")[1]
    with pytest.raises(InvalidArgument, match="between 1 and its primary version 2"):
        ring.set_min_decryption_version("enc", 3)
    with pytest.raises(InvalidArgument):
        ring.set_min_decryption_version("enc", 0)
    assert ring.set_min_decryption_version("enc", 2).min_decryption_version == 2
    with pytest.raises(VersionBelowMinimum, match="below the minimum decryption version 2"):
        ring.decrypt("enc", ct1)
    assert ring.decrypt("enc", ct2) == (2, b"two")
    ring = _reopen(ring, allocator, store)
    assert ring.get("enc").min_decryption_version == 2
    with pytest.raises(VersionBelowMinimum):
        ring.decrypt("enc", ct1)
    # the same rule holds for signatures
    ring.create("sig", "ed25519")
    s1 = ring.sign("sig", b"m")[1]
    ring.rotate("sig")
    ring.set_min_decryption_version("sig", 2)
    with pytest.raises(VersionBelowMinimum):
        ring.verify("sig", b"m", s1)
    ring.close()


def test_delete_version_zeroes_and_removes(
    ring: Keyring, allocator: SlotAllocator, store: SQLiteStore
) -> None:
    ring.create("keep", "ed25519")  # keeps the page in use, so the address stays mapped
    ring.create("sig", "ed25519")
    ring.rotate("sig")
    v1 = ring._keys["sig"].versions[1]
    assert v1.slot is not None
    address = v1.slot.address
    assert raw(address, 64) != bytes(64)
    with pytest.raises(FailedPrecondition, match="primary version"):
        ring.delete_version("sig", 2)
    with pytest.raises(VersionNotFound):
        ring.delete_version("sig", 7)
    info = ring.delete_version("sig", 1)
    assert [v.version for v in info.versions] == [2]
    assert v1.slot.freed
    assert raw(address, 64) == bytes(64)
    assert [v.version for r in store.load() if r.name == "sig" for v in r.versions] == [2]
    ring = _reopen(ring, allocator, store)
    assert [v.version for v in ring.get("sig").versions] == [2]
    # a rotation after deleting an old version does not reuse a number
    assert ring.rotate("sig").primary_version == 3
    ring.close()


def test_delete_key_zeroes_and_removes(
    ring: Keyring, allocator: SlotAllocator, store: SQLiteStore
) -> None:
    ring.create("keep", "xchacha20-poly1305")
    ring.create("gone", "xchacha20-poly1305")
    ring.rotate("gone")
    slots = [v.slot for v in ring._keys["gone"].versions.values()]
    addresses = [s.address for s in slots if s is not None]
    ring.delete("gone")
    assert all(raw(a, 32) == bytes(32) for a in addresses)
    with pytest.raises(KeyNotFound):
        ring.encrypt("gone", b"m")
    assert [r.name for r in store.load()] == ["keep"]
    ring = _reopen(ring, allocator, store)
    assert [k.name for k in ring.list()] == ["keep"]
    # the name is free again, and a new key under it is a new key
    assert ring.create("gone", "ed25519").primary_version == 1
    ring.close()


# --- wrapped import ------------------------------------------------------------------


def test_import_key_is_stable_across_restarts(
    ring: Keyring, allocator: SlotAllocator, store: SQLiteStore
) -> None:
    pk = ring.import_public_key
    assert len(pk) == 32
    assert store.get_meta("import_public") == pk
    ring = _reopen(ring, allocator, store)
    assert ring.import_public_key == pk
    seed = bytes(range(32))
    ring.import_wrapped("k", "ed25519", wrap(pk, seed))
    assert ring.public_key("k") == bytes(SigningKey(seed).verify_key)
    ring.close()


def test_import_refuses_bad_wrapping(ring: Keyring) -> None:
    pk = ring.import_public_key
    with pytest.raises(InvalidImport, match="32 bytes sealed"):
        ring.import_wrapped("k", "ed25519", wrap(pk, bytes(31)))
    with pytest.raises(InvalidImport, match="32 bytes sealed"):
        ring.import_wrapped("k", "x25519", wrap(pk, bytes(64)))
    with pytest.raises(InvalidImport, match="16 to 128"):
        ring.import_wrapped("k", "hmac-sha256", wrap(pk, bytes(129)))
    # sealed to some other key: does not open
    other = SealedBox(PublicKey(bytes(SigningKey.generate().verify_key.to_curve25519_public_key())))
    with pytest.raises(InvalidImport, match="does not open"):
        ring.import_wrapped("k", "xchacha20-poly1305", other.encrypt(bytes(32)))
    # tampered: does not open
    good = bytearray(wrap(pk, bytes(32)))
    good[-1] ^= 1
    with pytest.raises(InvalidImport):
        ring.import_wrapped("k", "xchacha20-poly1305", bytes(good))
    with pytest.raises(KeyNotFound):
        ring.get("k")  # nothing half-created


def test_import_of_existing_name_is_refused(ring: Keyring) -> None:
    ring.create("k", "ed25519")
    with pytest.raises(KeyExists):
        ring.import_wrapped("k", "ed25519", wrap(ring.import_public_key, bytes(32)))


def test_hmac_import_lengths(ring: Keyring) -> None:
    for n in (16, 33, 64, 65, 128):
        ring.import_wrapped(f"h{n}", "hmac-sha256", wrap(ring.import_public_key, bytes([7]) * n))
        assert ring._keys[f"h{n}"].versions[1].length == n
        assert ring.verify_mac(f"h{n}", b"m", ring.mac(f"h{n}", b"m")[1])


# --- public keys -------------------------------------------------------------------


def test_public_key_export(ring: Keyring) -> None:
    ring.create("sig", "ed25519")
    assert ring.public_key("sig", fmt="openssh").endswith(b" sig#v1\n")
    assert b'"kid": "sig#v1"' in ring.public_key("sig", fmt="jwk")
    assert ring.public_key("sig", fmt="pem").startswith(b"-----BEGIN PUBLIC KEY-----")
    ring.create("enc", "xchacha20-poly1305")
    with pytest.raises(InvalidArgument, match="symmetric"):
        ring.public_key("enc")
    with pytest.raises(VersionNotFound):
        ring.public_key("sig", 2)


# --- lifecycle ------------------------------------------------------------------------


def test_progress_reports_every_version(allocator: SlotAllocator, store: SQLiteStore) -> None:
    ring = open_ring(allocator, store)
    for i in range(5):
        ring.create(f"k{i}", "hmac-sha256")
    ring.rotate("k0")
    ring.close()
    seen: list[tuple[int, int]] = []
    source = UnsealSource(passphrase=PASSPHRASE)
    ring = Keyring.open(allocator, store, source, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 6) for i in range(0, 7)]  # (0, total) first: unsealing begins
    ring.close()


def test_closed_keyring_refuses_everything(ring: Keyring) -> None:
    ring.create("k", "ed25519")
    ring.close()
    ring.close()  # idempotent
    with pytest.raises(StoreSealed):
        ring.sign("k", b"m")
    with pytest.raises(StoreSealed):
        ring.create("k2", "ed25519")
    with pytest.raises(StoreSealed):
        ring.rotate("k")
    with pytest.raises(StoreSealed):
        ring.delete("k")


def test_close_zeroes_every_slot(allocator: SlotAllocator, store: SQLiteStore) -> None:
    ring = open_ring(allocator, store)
    ring.create("keep-page", "ed25519")
    ring.create("k", "ed25519")
    slot = ring._keys["k"].versions[1].slot
    assert slot is not None
    address = slot.address
    ring.close()
    # the allocator is still open and the page still mapped: the bytes are gone
    assert raw(address, 64) == bytes(64)


def test_concurrent_operations_and_rotation(ring: Keyring) -> None:
    """libsodium releases the GIL: signs in threads while the key rotates."""
    ring.create("sig", "ed25519")
    errors: list[BaseException] = []
    stop = threading.Event()

    def signer() -> None:
        try:
            while not stop.is_set():
                _, token = ring.sign("sig", b"m")
                assert ring.verify("sig", b"m", token)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=signer) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(20):
        ring.rotate("sig")
        ring.delete_version("sig", ring.get("sig").primary_version - 1)
    stop.set()
    for t in threads:
        t.join()
    # a signature made with a version deleted meanwhile may fail to verify
    # (VersionNotFound); anything else is a bug
    assert all(isinstance(e, VersionNotFound) for e in errors), errors
    assert [v.version for v in ring.get("sig").versions] == [21]


def test_key_material_is_in_the_backend_regions(ring: Keyring, allocator: SlotAllocator) -> None:
    ring.create("sig", "ed25519")
    slot = ring._keys["sig"].versions[1].slot
    assert slot is not None
    regions = [s.region for s in allocator._regions]
    assert any(r.address <= slot.address < r.address + r.length for r in regions)


class _CheckpointFails:
    """The store's connection, but WAL checkpoints fail (disk full, I/O error)."""

    def __init__(self, db: object) -> None:
        self._db = db

    def execute(self, sql: str, *args: object) -> object:
        if "wal_checkpoint" in sql:
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_a_failed_wal_scrub_after_a_committed_deletion_keeps_memory_and_disk_agreed(
    ring: Keyring, allocator: SlotAllocator, store: SQLiteStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The deletion committed: it is reported done, memory follows the disk,
    and the key keeps working (its row MAC covers the versions on disk)."""
    ring.create("k", "xchacha20-poly1305")
    ring.rotate("k")
    ring.rotate("k")
    ring.create("gone", "ed25519")
    real = store._db
    store._db = _CheckpointFails(real)  # type: ignore[assignment]
    try:
        info = ring.delete_version("k", 1)
        ring.delete("gone")
    finally:
        store._db = real
    assert [v.version for v in info.versions] == [2, 3]
    assert "could not be checkpointed" in caplog.text
    with pytest.raises(KeyNotFound):
        ring.get("gone")
    assert ring.rotate("k").primary_version == 4
    again = _reopen(ring, allocator, store)
    assert again.damaged_keys() == {}
    assert [v.version for v in again.get("k").versions] == [2, 3, 4]
    _, token = again.encrypt("k", b"still works")
    assert again.decrypt("k", token)[1] == b"still works"
    with pytest.raises(KeyNotFound):
        again.get("gone")
    again.close()


#: payload lengths after a correct header that are no signature (64 bytes) or MAC (32)
WRONG_SIGNATURE_LENGTHS = (0, 1, 32, 33, 63, 65, 128)
WRONG_MAC_LENGTHS = (0, 1, 16, 31, 33, 64)


def test_a_token_of_the_wrong_length_is_malformed_not_invalid(ring: Keyring) -> None:
    """The .proto promises INVALID_ARGUMENT for what is not a signature (or
    MAC) token: a correct header on a payload of the wrong length is one."""
    ring.create("sig", "ed25519")
    ring.create("mac", "hmac-sha256")
    for n in WRONG_SIGNATURE_LENGTHS:
        with pytest.raises(MalformedCiphertext, match=f"64 bytes after its 7-byte header, got {n}"):
            ring.verify("sig", b"m", framing.frame(Kind.SIGNATURE, 1, bytes(n)))
    for n in WRONG_MAC_LENGTHS:
        with pytest.raises(MalformedCiphertext, match=f"32 bytes after its 7-byte header, got {n}"):
            ring.verify_mac("mac", b"m", framing.frame(Kind.MAC, 1, bytes(n)))
    # the right length that does not match is a valid question with the answer no
    assert not ring.verify("sig", b"m", framing.frame(Kind.SIGNATURE, 1, bytes(64)))
    assert not ring.verify_mac("mac", b"m", framing.frame(Kind.MAC, 1, bytes(32)))


def _bare_box(public: bytes, message: bytes) -> bytes:
    """crypto_box_seal output, as any libsodium client makes it (not starting
    with 'SV' by chance: its first 32 bytes are a random ephemeral key)."""
    while (box := SealedBox(PublicKey(public)).encrypt(message))[:2] == framing.MAGIC:
        pass
    return box


def test_a_bare_sealed_box_is_told_what_header_it_lacks(ring: Keyring) -> None:
    """The most natural mistake with an X25519 key: Decrypt of bare
    crypto_box_seal output.  Refused (not guessed to be for the primary
    version), with what is missing: the 7-byte header, kind B, the version."""
    ring.create("box", "x25519")
    ring.rotate("box")
    box = _bare_box(ring.public_key("box", 2), b"hello")
    with pytest.raises(MalformedCiphertext) as info:
        ring.decrypt("box", box)
    message = str(info.value)
    for fact in ("sealed box", "7-byte header", "b'SVB'", "uint32, big-endian",
                 "the version of the public key it was sealed to", f"got {len(box)} bytes"):
        assert fact in message, (fact, message)
    assert "XChaCha20" not in message
    # framed with that header, the same box opens
    assert ring.decrypt("box", framing.frame(Kind.SEALED_BOX, 2, box)) == (2, b"hello")
    # an XChaCha20-Poly1305 key still names its own token
    ring.create("aead", "xchacha20-poly1305")
    with pytest.raises(MalformedCiphertext, match="XChaCha20-Poly1305"):
        ring.decrypt("aead", box)
