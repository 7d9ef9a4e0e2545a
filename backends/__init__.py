"""Secret memory for secretvault: backends, the slot allocator, accounting.

Three backends implement :class:`SecretMemoryBackend`:

* :class:`MemfdSecretBackend` — real secret memory, memfd_secret(2);
* the page-by-page and pooled-PMD *models* (``secretvault.backends.model``), which
  simulate the direct map and run on locked ordinary memory.

:class:`SlotAllocator` packs keys into the pages of any of them.
"""

from secretvault.backends._base import (
    KEY_SLOT_SIZES,
    BackendStats,
    DirectMapStats,
    MemlockStats,
    Protection,
    Region,
    SecretMemoryBackend,
    SecretMemoryStats,
    SizeClassStats,
)
from secretvault.backends._memfd import MemfdSecretBackend
from secretvault.backends._process import Exposure, drop_capabilities, exposure, tracer_pid
from secretvault.backends._procfs import PAGE_SIZE, MemcgReading
from secretvault.backends._slots import SIZE_CLASSES, Slot, SlotAllocator, size_class
from secretvault.backends._sys import harden_process, set_parent_death_signal

__all__ = [
    "KEY_SLOT_SIZES",
    "PAGE_SIZE",
    "SIZE_CLASSES",
    "BackendStats",
    "DirectMapStats",
    "Exposure",
    "MemcgReading",
    "MemfdSecretBackend",
    "MemlockStats",
    "Protection",
    "Region",
    "SecretMemoryBackend",
    "SecretMemoryStats",
    "SizeClassStats",
    "Slot",
    "SlotAllocator",
    "drop_capabilities",
    "exposure",
    "harden_process",
    "set_parent_death_signal",
    "size_class",
    "tracer_pid",
]
