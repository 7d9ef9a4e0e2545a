"""A process's secret memory seen from outside: /proc/PID/maps and status.

Used by the tests that check a vault gives back every secret page when it
stops (in-process, ``pid="self"``; or a server child, as root).
"""

from __future__ import annotations

#: how /proc/PID/maps names a memfd_secret file
SECRETMEM_NAME = "/secretmem (deleted)"


def secretmem_mappings(pid: int | str = "self") -> list[tuple[int, int]]:
    """(start, end) of every memfd_secret mapping of ``pid``, from /proc/PID/maps."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if line.rstrip("\n").endswith(SECRETMEM_NAME):
                start, end = line.split()[0].split("-")
                out.append((int(start, 16), int(end, 16)))
    return out


def vm_locked_bytes(pid: int | str = "self") -> int:
    """VmLck of ``pid`` (secretmem mappings are VM_LOCKED: their whole length counts)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmLck in /proc/{pid}/status")
