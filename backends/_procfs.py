"""Readers for the /proc and /sys files the accounting relies on.

All of these are plain file reads; none needs ctypes.  Each returns ``None``
(or an empty result) where the file is missing or unreadable, because a
container, an unprivileged user or another kernel may hide any of them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PAGES_PER_2M = (2 << 20) // PAGE_SIZE
PAGES_PER_1G = (1 << 30) // PAGE_SIZE

_PAGEMAP_PRESENT = 1 << 63
_PAGEMAP_PFN_MASK = (1 << 55) - 1


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        return None


def vmstat(*names: str) -> dict[str, int]:
    """Selected counters of /proc/vmstat (missing ones are left out)."""
    text = read_text("/proc/vmstat") or ""
    wanted = set(names)
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in wanted:
            out[key] = int(value)
    return out


class SplitCounters:
    """``direct_map_level2_splits`` and ``..._level3_splits``, read fast.

    For a probe that reads them after every page fault: the file stays open
    and one ``pread`` is searched for the two lines, without parsing the
    other ~180 (:func:`vmstat` costs ~90 us, this ~25).  Both read 0 where
    the kernel has no such counters (not x86, or older than 5.4).
    """

    _KEYS = (b"\ndirect_map_level2_splits ", b"\ndirect_map_level3_splits ")

    def __init__(self) -> None:
        self._fd = os.open("/proc/vmstat", os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> tuple[int, int]:
        """(level-2 splits, level-3 splits) now."""
        raw = os.pread(self._fd, 1 << 16, 0)
        l2, l3 = (self._field(raw, k) for k in self._KEYS)
        return l2, l3

    @staticmethod
    def _field(raw: bytes, key: bytes) -> int:
        i = raw.find(key)
        if i < 0:
            return 0
        i += len(key)
        return int(raw[i : raw.index(b"\n", i)])

    def close(self) -> None:
        os.close(self._fd)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    text = read_text("/proc/meminfo") or ""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            n = int(parts[0])
            out[key] = n * 1024 if len(parts) > 1 and parts[1] == "kB" else n
    return out


def has_cap_ipc_lock() -> bool:
    """CAP_IPC_LOCK in the effective set: memlock limits do not apply."""
    text = read_text("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 14))
    return False


def seccomp_mode() -> str:
    """The ``Seccomp:`` field of /proc/self/status (``"2"``: a filter is on)."""
    text = read_text("/proc/self/status") or ""
    return next((ln.split()[1] for ln in text.splitlines() if ln.startswith("Seccomp:")), "0")


def status_field(name: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of /proc/PID/status in bytes (e.g. ``VmLck``)."""
    text = read_text(f"/proc/{pid}/status") or ""
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return None


# --- pagemap --------------------------------------------------------------------


def pagemap(address: int, pages: int) -> tuple[int, list[int]]:
    """(present pages, their physical frame numbers) in [address, +pages).

    /proc/self/pagemap holds one 64-bit entry per virtual page: bit 63
    "present", bits 0-54 the PFN.  Since 4.2 the PFN reads as zero without
    CAP_SYS_ADMIN, so the frame list is empty for an unprivileged process
    while the present count is still right.  The file is mode 0400 and, once
    the process is not dumpable (harden_process, setuid), owned by root: a
    hardened unprivileged process cannot open it and gets (0, []).  Count
    resident pages with ``_sys.mincore`` instead.
    """
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0, []
    try:
        raw = os.pread(fd, pages * 8, (address // PAGE_SIZE) * 8)
    except OSError:
        return 0, []
    finally:
        os.close(fd)
    present = 0
    frames: list[int] = []
    for (entry,) in struct.iter_unpack("<Q", raw):
        if entry & _PAGEMAP_PRESENT:
            present += 1
            pfn = entry & _PAGEMAP_PFN_MASK
            if pfn:
                frames.append(pfn)
    return present, frames


def distinct_regions(frames: Iterable[int]) -> tuple[int, int]:
    """(distinct 2 MiB, distinct 1 GiB) physical regions holding ``frames``."""
    two_m: set[int] = set()
    one_g: set[int] = set()
    for pfn in frames:
        two_m.add(pfn // PAGES_PER_2M)
        one_g.add(pfn // PAGES_PER_1G)
    return len(two_m), len(one_g)


# --- memory cgroup -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemcgReading:
    version: int  # 1 or 2
    path: str
    usage: int | None
    limit: int | None  # None: no limit
    # secret pages are charged as page cache; these are the memory.stat keys
    # that include them (v1: cache, mapped_file, unevictable; v2: file,
    # file_mapped, unevictable)
    file: int | None
    file_mapped: int | None
    unevictable: int | None


def _cgroup_paths(cgroup_file: str) -> Iterator[tuple[str, str]]:
    """(controllers, path) pairs from /proc/self/cgroup."""
    text = read_text(cgroup_file) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            yield parts[1], parts[2]


def _int_or_none(text: str | None, unlimited_over: int = 1 << 60) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= unlimited_over else value


def _memcg_dir(mount: str, cgpath: str) -> str | None:
    # Inside a cgroup namespace the path is "/" and the mount is our own
    # cgroup; outside, append the path.  Try the most specific first.
    for candidate in (os.path.join(mount, cgpath.lstrip("/")), mount):
        if os.path.isdir(candidate):
            return candidate
    return None


def memcg(
    cgroup_file: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup"
) -> MemcgReading | None:
    """Usage, limit and the page-cache figures of this process's memcg.

    ``cgroup_file`` and ``cgroup_root`` default to the live system; tests
    point them at a copy of the files (v1 and v2 layouts).
    """
    for controllers, cgpath in _cgroup_paths(cgroup_file):
        if "memory" in controllers.split(","):
            d = _memcg_dir(os.path.join(cgroup_root, "memory"), cgpath)
            if d is None:
                continue
            stat = _parse_stat(read_text(os.path.join(d, "memory.stat")))
            return MemcgReading(
                version=1,
                path=cgpath,
                usage=_int_or_none(read_text(os.path.join(d, "memory.usage_in_bytes"))),
                limit=_int_or_none(read_text(os.path.join(d, "memory.limit_in_bytes"))),
                file=stat.get("cache"),
                file_mapped=stat.get("mapped_file"),
                unevictable=stat.get("unevictable"),
            )
    for controllers, cgpath in _cgroup_paths(cgroup_file):
        if controllers == "":
            d = _memcg_dir(cgroup_root, cgpath)
            if d is None or not os.path.exists(os.path.join(d, "memory.current")):
                continue
            stat = _parse_stat(read_text(os.path.join(d, "memory.stat")))
            return MemcgReading(
                version=2,
                path=cgpath,
                usage=_int_or_none(read_text(os.path.join(d, "memory.current"))),
                limit=_int_or_none(read_text(os.path.join(d, "memory.max"))),
                file=stat.get("file"),
                file_mapped=stat.get("file_mapped"),
                unevictable=stat.get("unevictable"),
            )
    return None


def _parse_stat(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out
