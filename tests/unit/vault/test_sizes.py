"""Byte counts as people read them (the summary, the stats table, the help)."""

from __future__ import annotations

import pytest

from secretvault.vault.sizes import format_bytes, format_exact_bytes


@pytest.mark.parametrize("n,text", [
    (None, "unlimited"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
    (1536, "1.5 KiB"), (48 << 10, "48.0 KiB"), (4 << 20, "4.0 MiB"),
    ((1 << 30) - 1, "1024.0 MiB"), (1 << 40, "1.0 TiB"), (1 << 50, "1024.0 TiB"),
])
def test_format_bytes(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (1000, "1000 B"), (1536, "1536 B"), (1024, "1 KiB"), (4 << 20, "4 MiB"),
    (64 << 20, "64 MiB"), (256 << 20, "256 MiB"), (4 << 30, "4 GiB"), (3 << 40, "3 TiB"),
])
def test_format_exact_bytes(n: int, text: str) -> None:
    assert format_exact_bytes(n) == text
