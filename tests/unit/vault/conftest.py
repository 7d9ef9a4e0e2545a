"""Fixtures for the vault core: a keyring over each backend, on a real SQLite store.

Every test runs twice: on real secret memory (memfd_secret, skipped with the
kernel's reason where it is missing) and on locked anonymous memory, so the
keyring's logic is checked on any machine and its real home is checked here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from secretvault.backends import SlotAllocator
from secretvault.vault.keyring import Keyring
from secretvault.vault.store import SQLiteStore
from tests.unit.vault._support import make_backend, open_ring


@pytest.fixture(
    params=[
        pytest.param("memfd_secret", marks=pytest.mark.memfd_secret),
        pytest.param("anonymous"),
    ]
)
def allocator(request: pytest.FixtureRequest) -> Iterator[SlotAllocator]:
    alloc = SlotAllocator(make_backend(request.param))
    yield alloc
    alloc.close()


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "keys.sqlite3")


@pytest.fixture
def store(store_path: str) -> Iterator[SQLiteStore]:
    s = SQLiteStore(store_path)
    yield s
    s.close()


@pytest.fixture
def ring(allocator: SlotAllocator, store: SQLiteStore) -> Iterator[Keyring]:
    r = open_ring(allocator, store)
    yield r
    r.close()
