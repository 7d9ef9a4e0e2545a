"""Secret memory per key, pages per 100,000 keys, and 2 MiB regions touched.

A real vault (``secretvault.vault.app.open_vault``: memfd_secret backend, slot
allocator, keyring, SQLite store) is opened on a temporary data directory
and asked for ``keys`` Ed25519 keys through ``Keyring.create``, exactly as
the CreateKey RPC does.  The store lives on tmpfs (``/dev/shm``) when there
is one: its fsyncs then cost nothing, and the store holds only sealed
records, which are not secret memory and do not change the figures.

The figures are deltas of the allocator's own statistics across the key
creation, so the vault's fixed overhead (its KEK, import key and HMAC
scratch) is left out:

* ``pages_resident``: pages actually faulted in, i.e. pages in secret
  memory, removed from the direct map;
* ``pages_mapped``: pages mapped, i.e. what RLIMIT_MEMLOCK is charged
  (memfd_secret charges the whole mapping at mmap time, touched or not),
  less the pages the fixed overhead already occupied;
* ``distinct_2m_regions`` (root only, from /proc/self/pagemap): distinct
  physical 2 MiB regions holding the vault's pages -- each one is a
  direct-map level-2 split the kernel made for them, permanent until reboot.

The ideal is libsodium's 64-byte Ed25519 secret key per key, packed with no
gap: ``ceil(keys * 64 / 4096)`` pages, and those pages physically
contiguous, ``ceil(pages / 512)`` 2 MiB regions.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks._measure import PeerMissing
from secretvault.api.errors import SecretMemoryUnavailable
from secretvault.backends import PAGE_SIZE

ED25519_SLOT_BYTES = 64
PAGES_PER_2M = (2 << 20) // PAGE_SIZE


@dataclass(frozen=True)
class KeyMemory:
    keys: int
    seconds: float
    bytes_per_key_resident: float
    bytes_per_key_locked: float
    ideal_bytes_per_key: int
    pages_resident: int
    pages_mapped: int
    ideal_pages: int
    regions: int
    distinct_2m_regions: int | None
    ideal_2m_regions: int
    level2_splits: int
    backend: str

    @property
    def pages_per_100k_resident(self) -> float:
        return self.pages_resident * 100_000 / self.keys

    @property
    def pages_per_100k_mapped(self) -> float:
        return self.pages_mapped * 100_000 / self.keys

    @property
    def ideal_pages_per_100k(self) -> int:
        return math.ceil(100_000 * ED25519_SLOT_BYTES / PAGE_SIZE)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pages_per_100k_resident"] = self.pages_per_100k_resident
        d["pages_per_100k_mapped"] = self.pages_per_100k_mapped
        d["ideal_pages_per_100k"] = self.ideal_pages_per_100k
        return d


def measure_key_memory(keys: int = 100_000) -> KeyMemory:
    from secretvault.vault.app import VaultConfig, open_vault

    # a private mkdtemp directory on tmpfs, so the store's fsyncs are free
    shm = "/dev/shm"  # noqa: S108
    base = shm if os.path.isdir(shm) else None
    with tempfile.TemporaryDirectory(prefix="sv-bench-keys-", dir=base) as d:
        try:
            v = open_vault(VaultConfig(data_dir=d, socket=os.path.join(d, "s"), harden=False))
        except SecretMemoryUnavailable as e:
            raise PeerMissing(f"memfd_secret unavailable: {e}") from e
        try:
            before = v.allocator.statistics()
            t0 = time.perf_counter()
            for i in range(keys):
                v.keyring.create(f"bench/k{i:06d}", "ed25519")
            seconds = time.perf_counter() - t0
            after = v.allocator.statistics()
        finally:
            v.close()
    # the vault's fixed overhead (KEK, import key) occupies the pages that
    # were resident before; everything mapped beyond them is for the keys
    resident = after.pages_resident - before.pages_resident
    mapped = after.pages_mapped - before.pages_resident
    ideal_pages = math.ceil(keys * ED25519_SLOT_BYTES / PAGE_SIZE)
    return KeyMemory(
        keys=keys,
        seconds=seconds,
        bytes_per_key_resident=resident * PAGE_SIZE / keys,
        bytes_per_key_locked=mapped * PAGE_SIZE / keys,
        ideal_bytes_per_key=ED25519_SLOT_BYTES,
        pages_resident=resident,
        pages_mapped=mapped,
        ideal_pages=ideal_pages,
        regions=after.regions,
        distinct_2m_regions=after.direct_map.distinct_2m_regions,
        ideal_2m_regions=math.ceil(after.pages_resident / PAGES_PER_2M),
        level2_splits=after.direct_map.level2_splits - before.direct_map.level2_splits,
        backend=after.backend,
    )
