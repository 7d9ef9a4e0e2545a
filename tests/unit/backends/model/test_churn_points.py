"""``--kernel-points``: what ``model churn --json`` writes is read back, and
anything else is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secretvault.backends.model._churn_points import (
    KernelPointsError,
    load_kernel_points,
    parse_kernel_points,
)
from secretvault.backends.model._host import HostMemory
from secretvault.backends.model._sequence import Step, step_names, step_pages
from secretvault.backends.model.churn import ChurnResult, StepCheck

DATA = Path(__file__).resolve().parents[4] / "docs" / "data"


def written(kernel_l2: list[int], model_l2: list[int], *, keep_first: bool = False) -> object:
    """What ``ChurnResult.points()`` makes of per-step splits (the writer itself)."""
    names = step_names()
    checks = tuple(
        StepCheck(n, Step(n, k, 0, 2 * i + 1), Step(n, m, 0, 2 * i + 2), 3)
        for i, (n, k, m) in enumerate(zip(names, kernel_l2, model_l2, strict=True))
    )
    host = HostMemory(
        mem_total=24 << 30, mem_free=0, directmap_4k=0, directmap_2m=0, directmap_1g=0,
        level2_splits=77, level3_splits=0, managed_pages=0, pcp=(0,), free_blocks=(),
        pageblocks=(0, 0, 0),
    )
    result = ChurnResult(keep_first, host, checks, 0.0, "page-model", 0.1)
    return json.loads(json.dumps(result.points()))


def test_reads_what_the_churn_command_writes() -> None:
    n = len(step_names())
    kernel = [i % 3 for i in range(n)]
    model = [i % 2 for i in range(n)]
    p = parse_kernel_points(written(kernel, model, keep_first=True), "x/run.json")
    assert p.source == "run.json" and p.keep_first and p.condition == "first 2 GiB kept mapped"
    assert p.machine_2m_regions == (24 << 30) // (2 << 20) and p.regions_split_before == 77
    assert [s.step for s in p.steps] == step_names()
    # cumulative on the way out, as written
    assert [s.kernel_l2 for s in p.steps][-1] == sum(kernel)
    assert [s.model_l2 for s in p.steps][-1] == sum(model)
    total = 0
    for s, pages in zip(p.steps, step_pages(), strict=True):
        total += pages
        assert s.pages == total
    assert [s.kernel_regions for s in p.steps] == [2 * i + 1 for i in range(n)]


@pytest.mark.parametrize("name", ["churn.json", "churn-keep-first.json"])
def test_reads_the_measured_files(name: str) -> None:
    p = load_kernel_points(str(DATA / name))
    assert p.keep_first == ("keep" in name)
    assert [s.step for s in p.steps] == step_names()
    assert p.machine_2m_regions > p.regions_split_before


def test_refusals_name_what_is_wrong(tmp_path: Path) -> None:
    good = written([0] * len(step_names()), [0] * len(step_names()))
    assert isinstance(good, dict)
    with pytest.raises(KernelPointsError, match=r"(?i)no such file"):
        load_kernel_points(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KernelPointsError, match="not JSON"):
        load_kernel_points(str(bad))
    with pytest.raises(KernelPointsError, match="not a JSON object"):
        parse_kernel_points([1, 2], "f")
    with pytest.raises(KernelPointsError, match="no 'steps'"):
        parse_kernel_points({k: v for k, v in good.items() if k != "steps"}, "f")
    steps = [dict(s) for s in good["steps"]]
    steps[3]["kernel_l2"] = -1
    with pytest.raises(KernelPointsError, match=r"steps\[3\]\.kernel_l2 is -1, not a count"):
        parse_kernel_points({**good, "steps": steps}, "f")
    steps = [dict(s) for s in good["steps"]]
    steps[2]["model_l2"] = 5  # and back to 0 at step 3: not cumulative
    with pytest.raises(KernelPointsError, match="cumulative"):
        parse_kernel_points({**good, "steps": steps}, "f")
    with pytest.raises(KernelPointsError, match="machine_2m_regions is 0"):
        parse_kernel_points({**good, "machine_2m_regions": 0}, "f")
