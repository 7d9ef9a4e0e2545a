"""The KEK (key file or Argon2id passphrase) and the sealing of key versions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.pwhash
import pytest

from secretvault.api.errors import IntegrityError, InvalidArgument, WrongPassphrase
from secretvault.backends import SlotAllocator
from secretvault.backends import _sodium as na
from secretvault.vault.sealing import (
    KEK_BYTES,
    Argon2Params,
    Kek,
    UnsealSource,
    create_key_file,
    read_key_file,
    version_ad,
)
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import FAST_KDF, PASSPHRASE, open_ring, raw

SALT = bytes(range(16))


def test_unseal_source_takes_exactly_one() -> None:
    with pytest.raises(InvalidArgument):
        UnsealSource()
    with pytest.raises(InvalidArgument):
        UnsealSource(passphrase=b"p", key_file="/k")
    assert UnsealSource(passphrase=b"p").kind == "passphrase"
    assert UnsealSource(key_file="/k").kind == "keyfile"


def test_passphrase_file_is_read_into_secret_memory(
    allocator: SlotAllocator, tmp_path: Path
) -> None:
    """A passphrase file gives the same KEK as the passphrase (newline dropped)."""
    pf = tmp_path / "pw"
    pf.write_bytes(PASSPHRASE + b"\r\n")
    source = UnsealSource(passphrase_file=str(pf))
    assert source.kind == "passphrase"
    from_file = Kek.derive(allocator, source, (FAST_KDF, SALT))
    direct = Kek.derive(allocator, UnsealSource(passphrase=PASSPHRASE), (FAST_KDF, SALT))
    assert _kek_bytes(from_file) == _kek_bytes(direct)
    from_file.close()
    direct.close()
    pf.write_bytes(b"x" * 300)
    with pytest.raises(InvalidArgument, match="at most 256"):
        Kek.derive(allocator, source, (FAST_KDF, SALT))
    pf.write_bytes(b"\n")
    with pytest.raises(InvalidArgument, match="empty"):
        Kek.derive(allocator, source, (FAST_KDF, SALT))


def test_argon2_params_round_trip() -> None:
    params, salt = Argon2Params.from_json(FAST_KDF.to_json(SALT))
    assert (params, salt) == (FAST_KDF, SALT)
    assert Argon2Params() == Argon2Params(ops=3, mem=64 << 20)


def _kek_bytes(kek: Kek) -> bytes:
    return raw(kek._slot.address, KEK_BYTES)


def test_passphrase_kek_is_argon2id(allocator: SlotAllocator) -> None:
    """The KEK in the slot is exactly what PyNaCl's Argon2id derives."""
    kek = Kek.derive(allocator, UnsealSource(passphrase=PASSPHRASE), (FAST_KDF, SALT))
    expected = nacl.pwhash.argon2id.kdf(
        KEK_BYTES, PASSPHRASE, SALT, opslimit=FAST_KDF.ops, memlimit=FAST_KDF.mem
    )
    assert _kek_bytes(kek) == expected
    kek.close()


def test_default_params_are_recorded_with_a_new_store(
    allocator: SlotAllocator, store: SQLiteStore
) -> None:
    """The one test of the default cost (ops=3, 64 MiB)."""
    ring = open_ring(allocator, store, kdf=Argon2Params())
    raw_kdf = store.get_meta("kdf")
    assert raw_kdf is not None
    params, salt = Argon2Params.from_json(raw_kdf)
    assert params == Argon2Params(ops=3, mem=64 << 20) and len(salt) == 16
    expected = nacl.pwhash.argon2id.kdf(KEK_BYTES, PASSPHRASE, salt, opslimit=3, memlimit=64 << 20)
    assert _kek_bytes(ring._unsealed.kek) == expected
    ring.close()
    # reopening uses the stored parameters, whatever the caller passes
    open_ring(allocator, store, kdf=FAST_KDF).close()


def test_key_file_read_straight_into_the_slot(tmp_path: Path, allocator: SlotAllocator) -> None:
    path = str(tmp_path / "unseal.key")
    create_key_file(path, allocator)
    st = os.stat(path)
    assert st.st_size == KEK_BYTES
    assert stat.S_IMODE(st.st_mode) == 0o600
    # no temporary file is left next to it
    assert sorted(os.listdir(tmp_path)) == ["unseal.key"]
    with allocator.allocate(KEK_BYTES) as slot:
        read_key_file(path, slot)
        assert raw(slot.address, KEK_BYTES) == Path(path).read_bytes()
    with pytest.raises(FileExistsError):
        create_key_file(path, allocator)
    assert sorted(os.listdir(tmp_path)) == ["unseal.key"]


def test_key_file_must_be_32_private_bytes(tmp_path: Path, allocator: SlotAllocator) -> None:
    path = tmp_path / "k"
    path.write_bytes(bytes(31))
    path.chmod(0o600)
    with allocator.allocate(KEK_BYTES) as slot:
        with pytest.raises(WrongPassphrase, match="exactly 32 raw bytes"):
            read_key_file(str(path), slot)
        path.write_bytes(bytes(32))
        path.chmod(0o640)
        with pytest.raises(WrongPassphrase, match="chmod 600"):
            read_key_file(str(path), slot)


def test_seal_round_trip_and_binding(allocator: SlotAllocator) -> None:
    kek = Kek.derive(allocator, UnsealSource(passphrase=PASSPHRASE), (FAST_KDF, SALT))
    ad = version_ad(b"s" * 16, "k", 1, "ed25519")
    with allocator.allocate(64) as secret, allocator.allocate(64) as out:
        na.randombytes_buf(secret.ptr, 64)
        nonce, sealed = kek.seal(secret, 64, ad)
        assert len(nonce) == 24 and len(sealed) == 64 + 16
        assert raw(secret.address, 64) not in sealed
        assert kek.unseal_into(out, nonce, sealed, ad) == 64
        assert raw(out.address, 64) == raw(secret.address, 64)
        for other in (
            version_ad(b"t" * 16, "k", 1, "ed25519"),
            version_ad(b"s" * 16, "j", 1, "ed25519"),
            version_ad(b"s" * 16, "k", 2, "ed25519"),
            version_ad(b"s" * 16, "k", 1, "x25519"),
        ):
            with pytest.raises(IntegrityError):
                kek.unseal_into(out, nonce, sealed, other)
            # a failed open leaves nothing behind in the slot
            assert raw(out.address, 64) == bytes(64)
        bad = bytearray(sealed)
        bad[3] ^= 1
        with pytest.raises(IntegrityError):
            kek.unseal_into(out, nonce, bytes(bad), ad)
        with pytest.raises(IntegrityError):
            kek.unseal_into(out, nonce, sealed[:-1], ad)
    kek.close()
    kek.close()  # idempotent


def test_version_ad_is_unambiguous() -> None:
    # length prefixes: moving a character between fields changes the bytes
    assert version_ad(b"id", "ab", 1, "c") != version_ad(b"id", "a", 1, "bc")
    assert version_ad(b"id", "a", 1, "x") != version_ad(b"ida", "", 1, "x")
    assert version_ad(b"id", "a", 1, "x") != version_ad(b"id", "a", 256, "x")


def test_check_value_tells_a_wrong_kek(allocator: SlotAllocator) -> None:
    right = Kek.derive(allocator, UnsealSource(passphrase=PASSPHRASE), (FAST_KDF, SALT))
    wrong = Kek.derive(allocator, UnsealSource(passphrase=b"wrong"), (FAST_KDF, SALT))
    check = right.make_check()
    assert right.check_version(check) is not None
    assert wrong.check_version(check) is None
    assert right.check_version(check[:10]) is None
    right.close()
    wrong.close()
