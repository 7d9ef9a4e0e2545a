"""Keyring listing: pages cut after filtering, in name order, built only for the page."""

from __future__ import annotations

import pytest

from secretvault.backends import SlotAllocator
from secretvault.vault import keys as keys_module
from secretvault.vault.keyring import Keyring
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import open_ring

NAMES = ["a", "pub/1", "pub/2", "pub/x/3", "pua", "pub", "q/1", "pub/4", "z"]


def _fill(ring: Keyring) -> None:
    for n in NAMES:
        ring.create(n, "hmac-sha256")


def _pages(ring: Keyring, limit: int, **kw: object) -> list[list[str]]:
    pages: list[list[str]] = []
    after = None
    while True:
        keys, more = ring.page(limit=limit, after=after, **kw)  # type: ignore[arg-type]
        pages.append([k.name for k in keys])
        if not more:
            return pages
        after = keys[-1].name


def test_pages_in_name_order_with_prefix_and_after(ring: Keyring) -> None:
    _fill(ring)
    assert _pages(ring, 4) == [sorted(NAMES)[:4], sorted(NAMES)[4:8], sorted(NAMES)[8:]]
    assert _pages(ring, 2, prefix="pub/") == [["pub/1", "pub/2"], ["pub/4", "pub/x/3"]]
    keys, more = ring.page(limit=10, prefix="pub/", after="pub/2")
    assert [k.name for k in keys] == ["pub/4", "pub/x/3"] and not more
    # an 'after' that is not a name (or sorts before the prefix) still works
    keys, _ = ring.page(limit=10, prefix="pub/", after="a")
    assert keys[0].name == "pub/1"
    assert ring.page(limit=3, after="zz") == ([], False)
    with pytest.raises(ValueError):
        ring.page(limit=0)


def test_visibility_is_applied_before_the_page_is_cut(ring: Keyring) -> None:
    _fill(ring)

    def visible(name: str) -> bool:
        return name.startswith("pub/")

    # full pages of visible names only; 'more' only when a visible name follows
    assert _pages(ring, 1, visible=visible) == [["pub/1"], ["pub/2"], ["pub/4"], ["pub/x/3"]]
    assert _pages(ring, 3, visible=visible) == [["pub/1", "pub/2", "pub/4"], ["pub/x/3"]]
    assert ring.page(limit=5, visible=lambda n: False) == ([], False)


def test_the_sorted_names_follow_creation_and_deletion(ring: Keyring) -> None:
    _fill(ring)
    assert [k.name for k in ring.page(limit=100)[0]] == sorted(NAMES)  # builds the index
    ring.create("pub/0", "ed25519")
    ring.delete("pub/2")
    ring.delete("z")
    want = sorted({*NAMES, "pub/0"} - {"pub/2", "z"})
    assert [k.name for k in ring.page(limit=100)[0]] == want
    assert [k.name for k in ring.list()] == want
    assert [k.name for k in ring.list("pub/")] == [n for n in want if n.startswith("pub/")]


def test_a_page_builds_info_only_for_its_own_keys(
        ring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(300):
        ring.create(f"k/{i:04d}", "hmac-sha256")
    built: list[str] = []
    real = keys_module.Key.info

    def counting(self: keys_module.Key) -> keys_module.KeyInfo:
        built.append(self.name)
        return real(self)

    monkeypatch.setattr(keys_module.Key, "info", counting)
    pages = _pages(ring, 25)
    assert len(pages) == 12 and sum(map(len, pages)) == 300
    # one KeyInfo per key listed, not one per key per page (O(N), not O(N^2))
    assert len(built) == 300


def test_listing_a_reopened_ring(allocator: SlotAllocator, store: SQLiteStore,
                                 ring: Keyring) -> None:
    _fill(ring)
    assert len(ring.page(limit=100)[0]) == len(NAMES)  # the sorted names exist now
    ring.close()
    assert ring.page(limit=10) == ([], False)  # closed: nothing, not an error
    again = open_ring(allocator, store)
    try:
        assert [k.name for k in again.page(limit=100)[0]] == sorted(NAMES)
    finally:
        again.close()
