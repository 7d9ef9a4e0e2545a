"""The churn sequence's measured points, read back from ``model churn --json``.

``secretvault model churn --json FILE`` writes
(:meth:`~secretvault.backends.model.churn.ChurnResult.points`)::

    {"keep_first": false, "agrees": true,
     "regions_split_before": 2542, "machine_2m_regions": 12052,
     "steps": [{"step": "grow to 1 page", "pages": 1, "kernel_l2": 0,
                "model_l2": 0, "kernel_regions": 1, "model_regions": 1}, ...]}

``pages`` is the secret pages touched so far, ``kernel_l2``/``model_l2``
each side's new level-2 splits so far, ``*_regions`` the distinct 2 MiB
regions that one step's pages landed in.  ``secretvault model compare
--plot FILE --kernel-points churn.json`` puts these on the chart; this
module checks the format once, with one line saying what is wrong.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

_STEP_FIELDS = ("pages", "kernel_l2", "model_l2", "kernel_regions", "model_regions")


class KernelPointsError(ValueError):
    """A ``--kernel-points`` file that is not what ``model churn --json`` writes."""


@dataclass(frozen=True, slots=True)
class ChurnPoint:
    step: str
    pages: int  # secret pages touched so far
    kernel_l2: int  # new level-2 splits so far, measured
    model_l2: int  # ... simulated
    kernel_regions: int  # 2 MiB regions this step's pages landed in, measured
    model_regions: int  # ... simulated


@dataclass(frozen=True, slots=True)
class KernelPoints:
    source: str  # the file's name, for the legend
    keep_first: bool
    agrees: bool
    regions_split_before: int
    machine_2m_regions: int
    steps: tuple[ChurnPoint, ...]

    @property
    def condition(self) -> str:
        return "first 2 GiB kept mapped" if self.keep_first else "first 2 GiB freed"

    def phase(self, prefix: str) -> tuple[int, int]:
        """New level-2 splits (kernel, model) over the steps named ``prefix ...``
        (``grow``: the first 2 GiB, ``again``: the second)."""
        k = m = 0
        before = (0, 0)
        for s in self.steps:
            if s.step.startswith(prefix + " "):
                k, m = k + s.kernel_l2 - before[0], m + s.model_l2 - before[1]
            before = (s.kernel_l2, s.model_l2)
        return k, m


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KernelPointsError(f"{where} is {value!r}, not a count")
    return value


def parse_kernel_points(data: object, source: str) -> KernelPoints:
    """Check one decoded ``model churn --json`` document; raise
    :class:`KernelPointsError` naming the first thing wrong."""
    if not isinstance(data, dict):
        raise KernelPointsError(f"{source}: not a JSON object")
    for key in ("keep_first", "steps", "machine_2m_regions"):
        if key not in data:
            raise KernelPointsError(
                f"{source}: no {key!r}: not what `secretvault model churn --json` writes"
            )
    steps_in = data["steps"]
    if not isinstance(steps_in, list) or not steps_in:
        raise KernelPointsError(f"{source}: 'steps' is not a non-empty list")
    steps = []
    for i, row in enumerate(steps_in):
        where = f"{source}: steps[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("step"), str):
            raise KernelPointsError(f"{where} has no step name")
        counts = [_int(row.get(k), f"{where}.{k}") for k in _STEP_FIELDS]
        steps.append(ChurnPoint(row["step"], *counts))
    for a, b in itertools.pairwise(steps):
        if b.pages < a.pages or b.kernel_l2 < a.kernel_l2 or b.model_l2 < a.model_l2:
            raise KernelPointsError(
                f"{source}: step {b.step!r} has fewer pages or splits than the one before "
                "(the counts are cumulative)"
            )
    regions = _int(data["machine_2m_regions"], f"{source}: machine_2m_regions")
    if regions == 0:
        raise KernelPointsError(f"{source}: machine_2m_regions is 0")
    return KernelPoints(
        source=Path(source).name,
        keep_first=bool(data["keep_first"]),
        agrees=bool(data.get("agrees", False)),
        regions_split_before=_int(data.get("regions_split_before", 0),
                                  f"{source}: regions_split_before"),
        machine_2m_regions=regions,
        steps=tuple(steps),
    )


def load_kernel_points(path: str) -> KernelPoints:
    """Read a file ``secretvault model churn --json`` wrote."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise KernelPointsError(f"{path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise KernelPointsError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    return parse_kernel_points(data, path)
