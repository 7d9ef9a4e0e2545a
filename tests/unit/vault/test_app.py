"""Vault.close: every slot reads back zero before its region is unmapped, and
no failure of the keyring or the store can skip zeroing and unmapping.

These open a real vault (composition root, SQLite store, memfd_secret) and
watch its secret memory from inside the process: the regions are mapped
here, so their bytes can be read until the backend unmaps them.  Reading is
done by a wrapper around the backend's ``free`` (the moment of unmapping)
and around the allocator's ``close`` (after the keyring closed, before any
region of the allocator is given back).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from secretvault.api.errors import StoreInUse, WrongPassphrase
from secretvault.backends import Region, Slot
from secretvault.vault.app import Vault, VaultConfig, open_vault
from secretvault.vault.sealing import Argon2Params
from tests._proc import secretmem_mappings
from tests.unit.vault._support import raw

pytestmark = pytest.mark.memfd_secret


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    config = VaultConfig(data_dir=str(tmp_path / "data"), socket=str(tmp_path / "v.sock"),
                         passphrase=b"pw", kdf=Argon2Params(ops=1, mem=8 << 20), harden=False)
    v = open_vault(config)
    for kind in ("ed25519", "x25519", "xchacha20-poly1305", "hmac-sha256"):
        for i in range(20):
            v.keyring.create(f"{kind}/{i}", kind)
        v.keyring.rotate(f"{kind}/0")
    v.keyring.mac("hmac-sha256/1", b"m")  # the pooled HMAC state slots, too
    yield v
    if not v.allocator._closed:
        v.allocator.close()


def _slots(v: Vault) -> list[Slot]:
    """Every slot the keyring holds: key versions, the import key, the KEK, scratch."""
    ring = v.keyring
    slots = [ver.slot for key in ring._keys.values() for ver in key.versions.values()
             if ver.slot is not None]
    assert ring._import.slot is not None
    slots += [ring._import.slot, ring._unsealed.kek._slot, *ring._scratch._free]
    return slots


def _watch_unmaps(v: Vault) -> list[tuple[Region, bytes]]:
    """Record each region's bytes at the moment the backend is asked to unmap it."""
    seen: list[tuple[Region, bytes]] = []
    real_free: Callable[[Region], None] = v.backend.free

    def free(region: Region) -> None:
        seen.append((region, raw(region.address, region.length)))
        real_free(region)

    v.backend.free = free  # type: ignore[method-assign]
    return seen


def _overlaps(ranges: list[tuple[int, int]], regions: list[Region]) -> bool:
    return any(s < r.address + r.length and r.address < e for s, e in ranges
               for r in regions)


def test_close_zeroes_every_slot_before_its_region_is_unmapped(vault: Vault) -> None:
    slots = [(s.address, s.size) for s in _slots(vault)]
    assert len(slots) > 80
    # the keys are there: random key material is not all zeros (the HMAC
    # state slots are wiped after each use, and unused ones are zero)
    keys = [(s.address, s.size) for s in _slots(vault) if s not in vault.keyring._scratch._free]
    assert all(raw(a, n) != bytes(n) for a, n in keys)
    regions = [st.region for st in vault.allocator._regions]
    assert _overlaps(secretmem_mappings(), regions)
    unmapped = _watch_unmaps(vault)

    at_allocator_close: list[bytes] = []
    real_close = vault.allocator.close

    def close() -> None:
        # the keyring has closed; nothing is unmapped yet: every slot it held
        # must already read back zero
        at_allocator_close.extend(raw(a, n) for a, n in slots)
        real_close()

    vault.allocator.close = close  # type: ignore[method-assign]
    vault.close()

    assert at_allocator_close == [bytes(n) for _, n in slots]
    # every region the vault had was unmapped, and read back zero just before
    assert {r.address for r, _ in unmapped} >= {r.address for r in regions}
    for region, content in unmapped:
        assert content == bytes(region.length), f"region at {region.address:#x} not zeroed"
    assert vault.backend.statistics().regions == 0
    # and the kernel agrees: none of those mappings is left in this process
    assert not _overlaps(secretmem_mappings(), regions)


def _fail(what: str) -> Callable[[], None]:
    def fail() -> None:
        raise RuntimeError(f"{what} failed")
    return fail


@pytest.mark.parametrize("part", ["keyring", "store"])
def test_a_failing_part_cannot_skip_zeroing_and_unmapping(vault: Vault, part: str) -> None:
    slots = [(s.address, s.size) for s in _slots(vault)]
    regions = [st.region for st in vault.allocator._regions]
    unmapped = _watch_unmaps(vault)
    real_store_close = vault.store.close
    if part == "keyring":
        # the keyring fails before freeing a single slot: the keys are still
        # in their slots when the allocator closes, and it must zero them
        vault.keyring.close = _fail("keyring.close")  # type: ignore[method-assign]
    else:
        vault.store.close = _fail("store.close")  # type: ignore[method-assign]

    with pytest.raises(RuntimeError, match=f"{part}.close failed"):
        vault.close()

    assert vault.allocator._closed
    assert vault.backend.statistics().regions == 0
    assert {r.address for r, _ in unmapped} >= {r.address for r in regions}
    for region, content in unmapped:
        assert content == bytes(region.length), f"region at {region.address:#x} not zeroed"
    if part == "keyring":
        # the slots were live when the allocator zeroed them (not zeroed by the keyring)
        assert all(any(r.address <= a < r.address + r.length for r, _ in unmapped)
                   for a, _ in slots)
        # and the store was still closed
        with pytest.raises(sqlite3.ProgrammingError):
            real_store_close.__self__._db.execute("SELECT 1")  # type: ignore[attr-defined]
    assert not _overlaps(secretmem_mappings(), regions)
    # and the store was let go: another vault may open it
    assert not vault.lock.held


def test_a_second_vault_shares_the_store_but_a_migration_waits_for_the_first(
        vault: Vault) -> None:
    """Contract change (the change feed): serving vaults share a store; only
    what needs it alone (here a format migration) is refused while one serves."""
    second = open_vault(vault.config)
    assert second.lock.held and second.lock.shared and vault.lock.shared
    second.close()
    db = sqlite3.connect(vault.config.store_path)
    db.execute("UPDATE meta SET value = CAST('1' AS BLOB) WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(StoreInUse, match="needs it alone"):
        open_vault(vault.config)
    vault.close()
    open_vault(vault.config).close()


def test_a_failed_open_lets_go_of_the_store(tmp_path: Path) -> None:
    config = VaultConfig(data_dir=str(tmp_path / "data"), socket="", passphrase=b"pw",
                         kdf=Argon2Params(ops=1, mem=8 << 20), harden=False)
    open_vault(config).close()
    wrong = dataclasses.replace(config, passphrase=b"not the passphrase")
    with pytest.raises(WrongPassphrase):
        open_vault(wrong)
    open_vault(config).close()  # not refused with StoreInUse: the failed opener let go
