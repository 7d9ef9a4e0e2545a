"""The backend interface and the frozen stats records every layer shares.

A backend hands out *regions*: page-aligned, zero-filled, read-write
mappings of a whole number of pages, which it alone knows how to free.  The
slot allocator (``_slots.py``) packs keys into them, whatever the backend.

Stats are frozen dataclasses tagged with the backend name and its
protection; the gRPC stats message, the CLI table and the Prometheus metrics
are all built from the same :class:`SecretMemoryStats` record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from secretvault.backends import _sodium
from secretvault.backends._procfs import PAGE_SIZE, MemcgReading

Protection = Literal["secretmem", "model"]

#: Slot bytes each key type needs: libsodium's in-memory key sizes.  Ed25519
#: keeps the 64-byte secret key (seed || public key); the others are 32-byte
#: keys.  The one table: the keyring allocates by it, the accounting turns
#: memlock headroom into keys of each type with it.
KEY_SLOT_SIZES: dict[str, int] = {
    "ed25519": _sodium.SIGN_SECRETKEYBYTES,
    "x25519": _sodium.BOX_SECRETKEYBYTES,
    "xchacha20-poly1305": _sodium.AEAD_XCHACHA_KEYBYTES,
    "hmac-sha256": _sodium.HMACSHA256_KEYBYTES,
}


@dataclass(frozen=True, slots=True)
class Region:
    """A mapping handed out by a backend: ``pages`` pages at ``address``."""

    address: int
    pages: int

    @property
    def length(self) -> int:
        return self.pages * PAGE_SIZE


@dataclass(frozen=True, slots=True)
class DirectMapStats:
    """Direct-map fragmentation, with the kernel's own counter meanings.

    ``source`` is ``"kernel"`` for figures read from /proc (deltas since the
    backend started: other kernel activity moves them too) or ``"model"`` for
    a simulation's own counters.
    """

    source: Literal["kernel", "model"]
    level2_splits: int
    level3_splits: int
    directmap_4k: int  # bytes mapped with 4 KiB entries, now
    directmap_2m: int
    directmap_1g: int
    directmap_4k_delta: int
    directmap_2m_delta: int
    directmap_1g_delta: int
    # exact attribution: distinct physical regions holding *our* pages
    # (from /proc/self/pagemap, root only; None when frames are hidden)
    distinct_2m_regions: int | None
    distinct_1g_regions: int | None


@dataclass(frozen=True, slots=True)
class BackendStats:
    backend: str
    protection: Protection
    regions: int
    pages_mapped: int
    pages_resident: int  # pages actually backed by memory (faulted in)
    hibernation_inhibited: bool
    direct_map: DirectMapStats
    # backend-specific figures (the models' pool waste, allocation failures,
    # memcg over-charge...), as (name, value) pairs
    extra: tuple[tuple[str, float], ...] = ()


@runtime_checkable
class SecretMemoryBackend(Protocol):
    """Allocate a region of pages, free it, report stats."""

    @property
    def name(self) -> str: ...

    @property
    def protection(self) -> Protection: ...

    def allocate(self, pages: int) -> Region:
        """A new zero-filled region, or a typed error (memlock, exhaustion)."""
        ...

    def free(self, region: Region) -> None:
        """Unmap a region; its pages are zeroed by the kernel (or the model)."""
        ...

    def touch(self, address: int) -> None:
        """The slot allocator is about to use the page at ``address`` for
        the first time.  The kernel faults a secret page by itself on the
        first write; a model records the fault here."""
        ...

    def statistics(self) -> BackendStats: ...

    def close(self) -> None:
        """Free every region still allocated."""
        ...


@dataclass(frozen=True, slots=True)
class SizeClassStats:
    size: int
    pages: int
    slots_used: int
    slots_free: int


@dataclass(frozen=True, slots=True)
class MemlockStats:
    soft: int  # bytes, -1 unlimited
    hard: int
    locked: int  # VmLck
    cap_ipc_lock: bool  # CAP_IPC_LOCK bypasses the limit
    headroom_bytes: int | None  # None: unlimited
    headroom_keys: tuple[tuple[str, int | None], ...]  # per key type


@dataclass(frozen=True, slots=True)
class SecretMemoryStats:
    """Everything secret memory costs, right now, for one backend."""

    backend: str
    protection: Protection
    regions: int
    pages_mapped: int
    pages_resident: int
    bytes_locked: int  # pages_mapped * page size: what memlock is charged
    key_bytes: int  # bytes in used slots: keys, and the vault's own (KEK, scratch...)
    slots: tuple[SizeClassStats, ...]
    memlock: MemlockStats
    memcg: MemcgReading | None
    hibernation_inhibited: bool
    direct_map: DirectMapStats
    extra: tuple[tuple[str, float], ...] = field(default=())
