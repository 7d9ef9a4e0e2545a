"""Byte counts as people read them: ``48.0 KiB``, and ``4 MiB`` for exact sizes.

One place for the units, shared by the server's start-up summary and the
command's tables and help.
"""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int | None) -> str:
    """``512 B``, ``1.5 KiB`` ... ``2.0 TiB``, one decimal past bytes; None: ``unlimited``."""
    if n is None:
        return "unlimited"
    size = float(n)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_exact_bytes(n: int) -> str:
    """``n`` in the largest unit that divides it: ``4 MiB``, ``1536 B`` (a default, a limit)."""
    for unit in reversed(_UNITS):
        scale = 1 << (10 * _UNITS.index(unit))
        if n and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"
