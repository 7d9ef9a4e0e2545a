"""Quotas on secret memory: versions per key, bytes per identity (keyring and policy)."""

from __future__ import annotations

import sqlite3

import pytest

from secretvault.api.errors import QuotaExceeded, TooManyVersions
from secretvault.backends import SlotAllocator
from secretvault.vault.keyring import Keyring
from secretvault.vault.policy import DEFAULT_SECRET_MEMORY, Policy, PolicyError
from secretvault.vault.quotas import IdentityUse
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import open_ring


def _use(ring: Keyring) -> dict[str, int]:
    return {u.identity: u.secret_bytes for u in ring.quotas.snapshot()}


def test_each_version_is_charged_to_its_creator_until_it_is_deleted(ring: Keyring) -> None:
    ring.quotas.configure(max_versions=None, budget=lambda who: 256 if who == "ci" else None)
    ring.create("a", "ed25519", by="ci")  # 64 bytes
    ring.create("b", "x25519", by="ci")  # 32
    ring.rotate("a", by="ci")  # 64
    ring.create("c", "ed25519")  # no identity: charged to nobody
    ring.rotate("c", by="owner")
    assert _use(ring) == {"ci": 160, "owner": 64}
    ring.rotate("a", by="ci")  # 224
    with pytest.raises(QuotaExceeded, match=r"identity 'ci' holds 224 bytes .* quota "
                       r"\(secret_memory in the policy\) is 256 bytes"):
        ring.rotate("a", by="ci")
    with pytest.raises(QuotaExceeded):
        ring.create("d", "ed25519", by="ci")
    assert ring.get("a").primary_version == 3 and "d" not in {k.name for k in ring.list()}
    # a 32-byte key still fits; then the owner deletes what ci made
    ring.create("e", "hmac-sha256", by="ci")
    ring.delete_version("a", 1)
    assert _use(ring)["ci"] == 192
    ring.delete("a")
    assert _use(ring) == {"ci": 64, "owner": 64}


def test_a_key_has_at_most_max_versions(ring: Keyring) -> None:
    ring.quotas.configure(max_versions=3, budget=lambda who: None)
    ring.create("k", "xchacha20-poly1305")
    ring.rotate("k")
    ring.rotate("k")
    with pytest.raises(TooManyVersions, match=r"key 'k' has 3 versions.*delete old versions"):
        ring.rotate("k", by="anyone")
    ring.delete_version("k", 1)
    assert ring.rotate("k").primary_version == 4


def test_use_is_recounted_from_the_store_at_each_start(
        allocator: SlotAllocator, store: SQLiteStore) -> None:
    ring = open_ring(allocator, store)
    ring.create("a", "ed25519", by="ci")
    ring.rotate("a", by="ci")
    ring.create("b", "x25519", by="owner")
    ring.close()
    again = open_ring(allocator, store)
    try:
        assert _use(again) == {"ci": 128, "owner": 32}
    finally:
        again.close()


def test_a_store_from_before_quotas_gains_the_column_with_its_next_version(
        allocator: SlotAllocator, store_path: str) -> None:
    store = SQLiteStore(store_path)
    ring = open_ring(allocator, store)
    ring.create("old", "ed25519")
    ring.close()
    store.close()
    db = sqlite3.connect(store_path)
    db.execute("ALTER TABLE key_versions DROP COLUMN created_by")  # as an older vault wrote it
    db.commit()
    db.close()
    store = SQLiteStore(store_path)
    ring = open_ring(allocator, store)
    try:
        assert _use(ring) == {}  # the old versions are charged to nobody
        ring.rotate("old", by="ci")
        ring.create("new", "x25519", by="ci")
    finally:
        ring.close()
        store.close()
    store = SQLiteStore(store_path)
    ring = open_ring(allocator, store)
    try:
        assert _use(ring) == {"ci": 96}
        assert ring.get("old").primary_version == 2
    finally:
        ring.close()
        store.close()


def test_the_snapshot_lists_the_policys_identities_with_their_quotas(ring: Keyring) -> None:
    ring.quotas.configure(max_versions=100, budget=lambda who: None if who == "owner" else 4096,
                          identities=("owner", "ci"))
    ring.create("a", "ed25519", by="tls:stranger")
    assert ring.quotas.snapshot() == (IdentityUse("ci", 0, 4096), IdentityUse("owner", 0, None),
                                      IdentityUse("tls:stranger", 64, 4096))


def test_the_policy_gives_every_identity_but_the_owner_a_quota() -> None:
    p = Policy.from_dict({
        "quotas": {"secret_memory": "2 MiB"},
        "identities": {"a": {"secret_memory": "4 KiB"}, "b": {},
                       "c": {"secret_memory": "unlimited"}, "d": {"secret_memory": 1000}},
        "anonymous": {"secret_memory": 0},
    })
    assert [p.secret_memory(i) for i in ("owner", "a", "b", "c", "d", "anonymous", "tls:x")] == [
        None, 4096, 2 << 20, None, 1000, 0, 2 << 20]
    plain = Policy.from_dict({"identities": {"a": {}}})
    assert plain.secret_memory("a") == DEFAULT_SECRET_MEMORY == 1 << 20
    assert Policy().secret_memory("owner") is None


@pytest.mark.parametrize("value", ["4 KB", "-1", -5, True, "lots", 1.5])
def test_a_quota_that_is_not_a_size_is_refused(value: object) -> None:
    with pytest.raises(PolicyError, match=r"\[identities.a\] secret_memory must be a number "
                       r"of bytes"):
        Policy.from_dict({"identities": {"a": {"secret_memory": value}}})
    with pytest.raises(PolicyError, match=r"unknown field\(s\) bytes in \[quotas\]"):
        Policy.from_dict({"quotas": {"bytes": 1}})
