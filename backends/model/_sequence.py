"""The churn sequence's steps: their sizes, names and measured record.

Shared by the kernel side (``_kernelprobe``) and the comparison
(``churn``), which imports the probe only when it measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: checkpoints of each 2 GiB region, in pages: 1 page to 2 GiB
GROWTH = (1, 1 << 10, 1 << 13, 1 << 16, 1 << 17, 1 << 18, 1 << 19)
SMALL_REGIONS = 256


@dataclass(frozen=True)
class Step:
    name: str
    l2: int
    l3: int
    regions: int
    seconds: float = 0.0
    #: the 2 MiB regions themselves, for the placement of a whole allocation
    region_set: frozenset[int] = field(default=frozenset(), repr=False, compare=False)


def step_names() -> list[str]:
    mib = [n * 4096 >> 20 for n in GROWTH]
    grow = ["grow to 1 page"] + [f"grow to {m} MiB" for m in mib[1:]]
    again = ["again to 1 page"] + [f"again to {m} MiB" for m in mib[1:]]
    return [*grow, "free", f"{SMALL_REGIONS} one-page regions", *again]


def step_pages() -> list[int]:
    grow = [b - a for a, b in zip((0, *GROWTH), GROWTH, strict=False)]
    return [*grow, 0, SMALL_REGIONS, *grow]


def prefix_names(prefix: str) -> list[str]:
    names = step_names()
    return names[: len(GROWTH)] if prefix == "grow" else names[len(GROWTH) + 2 :]
