"""The chart has the panels and curves it claims, read from the matplotlib
figure objects (not from pixels), for a small run of every scenario on
every design."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from secretvault.backends.model import _chart
from secretvault.backends.model._churn_points import (
    KernelPoints,
    load_kernel_points,
    parse_kernel_points,
)
from secretvault.backends.model.report import compare
from secretvault.backends.model.scenarios import MODELS, SCENARIOS, ModelResult, ScenarioConfig

DATA = Path(__file__).resolve().parents[4] / "docs" / "data"
MiB = 1 << 20
CFG = ScenarioConfig(keys=1500, memory_bytes=512 * MiB, cma_bytes=16 * MiB)
TAGS = [tag for tag, _ in _chart.ROWS]


@pytest.fixture(scope="module")
def results() -> list[ModelResult]:
    return compare(list(SCENARIOS), list(MODELS), CFG)


def a_kernel_run() -> KernelPoints:
    """A run shaped like issue 15's (the second 2 GiB beside the first): the
    measured file's steps with splits that rise, for a reader that must
    place them."""
    p = load_kernel_points(str(DATA / "churn-keep-first.json"))
    steps = []
    for i, s in enumerate(p.steps):
        steps.append({"step": s.step, "pages": s.pages, "kernel_l2": 10 * i,
                      "model_l2": 9 * i, "kernel_regions": 3 * i, "model_regions": 0})
    return parse_kernel_points({"keep_first": True, "agrees": False, "regions_split_before": 5,
                                "machine_2m_regions": 1000, "steps": steps}, "rising.json")


@pytest.fixture(scope="module")
def kernel() -> list[KernelPoints]:
    return [load_kernel_points(str(DATA / "churn.json")), a_kernel_run()]


@pytest.fixture(scope="module")
def fig(results: list[ModelResult], kernel: list[KernelPoints]) -> Figure:
    f = _chart.figure(results, title="test", kernel=kernel)
    f.draw_without_rendering()  # lays out, sets the secondary axes' limits
    return f


def panel(fig: Figure, label: str) -> Axes:
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, f"no single panel {label!r}: {[a.get_label() for a in fig.axes]}"
    return found[0]


def curves(ax: Axes) -> dict[str, Line2D]:
    return {str(line.get_label()): line for line in ax.get_lines()}


def texts(ax: Axes) -> str:
    return "\n".join(t.get_text() for t in ax.texts)


def test_every_scenario_has_every_panel_and_every_design_its_curve(
    fig: Figure, results: list[ModelResult]
) -> None:
    for r in results:
        for tag in TAGS:
            line = curves(panel(fig, f"{tag}:{r.scenario}"))[r.model]
            ys = list(line.get_ydata())
            assert line.get_xdata()[-1] == r.pages_requested  # held to the end of the run
            if tag == "splits":
                assert ys[-1] == r.level2_splits
            elif tag == "failures":
                assert ys[-1] == r.allocation_failures
            elif tag == "free2m":
                assert min(ys) == min(n for _, n in r.free_2m_series)
            elif tag == "waste":
                assert max(ys) == max(w for _, w in r.waste_series) / MiB
            else:
                assert max(ys) == max(w for _, w in r.overcharge_series) / MiB
                assert max(ys) * MiB <= r.peak_memcg_overcharge_bytes  # sampled, not above


def test_the_three_designs_and_the_variant_are_told_apart(fig: Figure) -> None:
    lines = curves(panel(fig, "splits:keyring"))
    assert set(lines) == set(MODELS)
    looks = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines.values()}
    assert len(looks) == len(MODELS)
    # a curve drawn later (higher zorder) is thinner, so one on top of
    # another leaves the other's edge visible
    by_z = sorted(lines.values(), key=lambda ln: ln.get_zorder())
    widths = [ln.get_linewidth() for ln in by_z if ln.get_label() != "page-model"]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)


def test_coinciding_curves_are_named_where_they_coincide(
    fig: Figure, results: list[ModelResult]
) -> None:
    named = 0
    for scenario in SCENARIOS:
        for tag in TAGS:
            rs = [r for r in results if r.scenario == scenario]
            groups = _chart.coinciding({r.model: _chart.panel_series(r, tag) for r in rs})
            notes = texts(panel(fig, f"{tag}:{scenario}"))
            for g in groups:
                assert " = ".join(_chart.style(m).short for m in g) in notes, (tag, scenario)
                named += 1
            if not groups:
                assert "coincide" not in notes
    assert named >= 10  # the pool and its variant coincide in most panels here


def test_coinciding_compares_step_functions() -> None:
    a = [(0, 0), (10, 1), (20, 1)]
    same = [(0, 0), (10, 1), (15, 1), (20, 1)]  # one more sample, the same steps
    later = [(0, 0), (11, 1), (20, 1)]
    shorter = [(0, 0), (10, 1), (19, 1)]
    assert _chart.coinciding({"a": a, "b": same, "c": later, "d": shorter}) == [["a", "b"]]


def test_failures_and_overcharge_are_plotted_and_named(
    fig: Figure, results: list[ModelResult]
) -> None:
    pooled = next(r for r in results if (r.scenario, r.model) == ("fork-bomb", "pooled-pmd-model"))
    assert pooled.oom_kills > 0
    ax = panel(fig, "failures:fork-bomb")
    assert curves(ax)["pooled-pmd-model"].get_ydata()[-1] == pooled.oom_kills
    assert f"pooled: {pooled.oom_kills:,} OOM-killed (VM_FAULT_OOM)" in texts(ax)
    over = texts(panel(fig, "overcharge:fork-bomb"))
    assert f"pooled x{pooled.worst_memcg_charge_ratio:,.0f}" in over
    buddy = next(r for r in results if (r.scenario, r.model) == ("fork-bomb", "pmd-buddy-model"))
    if buddy.min_free_2m_blocks == 0:
        assert "pmd-buddy: no free 2 MiB block left" in texts(panel(fig, "free2m:fork-bomb"))


@pytest.mark.parametrize("tag", ["splits", "free2m"])
def test_splits_and_free_blocks_are_shown_as_a_share_of_the_machine(
    fig: Figure, results: list[ModelResult], tag: str
) -> None:
    regions = results[0].machine_2m_regions
    assert regions == CFG.memory_bytes // (2 * MiB)
    for scenario in SCENARIOS:
        ax = panel(fig, f"{tag}:{scenario}")
        (share,) = [c for c in ax.child_axes if c.get_label() == "share"]
        lo, hi = ax.get_ylim()
        assert share.get_ylim() == pytest.approx((100 * lo / regions, 100 * hi / regions))
    assert "2 MiB regions" in panel(fig, f"{tag}:fork-bomb").child_axes[0].get_ylabel()


def test_the_kernel_points_are_on_the_same_axes_as_the_model(
    fig: Figure, kernel: list[KernelPoints]
) -> None:
    ax = panel(fig, "kernel:splits")
    lines = list(ax.get_lines())
    for p in kernel:
        share = 100 / p.machine_2m_regions
        gib = [s.pages * 4096 / (1 << 30) for s in p.steps]
        (k1, _), (k2, _) = p.phase("grow"), p.phase("again")
        measured = [ln for ln in lines if ln.get_label() == f"kernel, {p.condition}: "
                    f"{k1:,} + {k2:,} new splits, measured"]
        model = [ln for ln in lines if str(ln.get_label()).startswith(f"model, {p.condition}")]
        assert len(measured) == 1 and len(model) == 1
        assert list(measured[0].get_xdata()) == pytest.approx(gib)
        assert list(model[0].get_xdata()) == pytest.approx(gib)
        assert list(measured[0].get_ydata()) == pytest.approx([s.kernel_l2 * share
                                                               for s in p.steps])
        assert list(model[0].get_ydata()) == pytest.approx([s.model_l2 * share for s in p.steps])
    placed = panel(fig, "kernel:regions")
    rising = kernel[1]
    (k,) = [ln for ln in placed.get_lines() if ln.get_label() == f"kernel ({rising.condition})"]
    assert list(k.get_ydata()) == [max(s.kernel_regions, 0.5) for s in rising.steps]
    assert "first 2 GiB" in texts(ax)


def test_without_kernel_points_there_is_no_kernel_column(results: list[ModelResult]) -> None:
    f = _chart.figure(results, title="t")
    assert not [ax for ax in f.axes if ax.get_label().startswith("kernel:")]
    assert len(f.axes) == len(SCENARIOS) * len(TAGS)
