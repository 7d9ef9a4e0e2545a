"""The Store protocol's records: a change carries no key material; a stale write
says where the feed is."""

from __future__ import annotations

import dataclasses

from secretvault.vault.store_protocol import Change, StaleFeed


def test_a_change_names_the_key_and_version_only() -> None:
    fields = {f.name for f in dataclasses.fields(Change)}
    assert fields == {"seq", "kind", "name", "version", "at"}
    c = Change(3, "rotate", "k", 2, 1.5)
    assert (c.seq, c.kind, c.name, c.version) == (3, "rotate", "k", 2)


def test_a_stale_write_is_not_a_vault_error() -> None:
    """It never reaches a client: the keyring catches up and tries again."""
    from secretvault.api.errors import VaultError

    e = StaleFeed(7)
    assert e.head == 7 and "7" in str(e)
    assert not isinstance(e, VaultError)
