"""The chart of ``secretvault model compare --plot FILE`` (matplotlib, Agg).

Left, the designs simulated, one column per scenario, one row per cost:

* ``splits`` -- direct-map level-2 splits, and on the right axis the share
  of the machine's 2 MiB regions they are;
* ``free2m`` -- free 2 MiB blocks outside CMA (what PMD-buddy and THPs
  need), with the same share on the right;
* ``failures`` -- failed secret faults so far (v16's are OOM kills);
* ``overcharge`` -- memcg bytes charged beyond the secret pages in use;
* ``waste`` -- pool bytes held holding no secret page.

Right, with ``--kernel-points``: the churn sequence as the kernel made it
(measured by ``model churn``) and as the page model simulated it, on the
same axes, splits as a share of that machine's 2 MiB regions.

Every design keeps one colour, line style and marker throughout; a later
curve is drawn thinner on top of an earlier one, and curves that coincide
are named so in the panel, so that no design hides behind another.  Every
panel is tagged (``Axes.get_label()``: ``"splits:keyring"``, ``"kernel:splits"``)
and every curve carries its design's name as its label, which is what the
tests read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.typing import LineStyleType
from numpy.typing import ArrayLike

from secretvault.backends.model._churn_points import KernelPoints
from secretvault.backends.model.scenarios import ModelResult

Series = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Style:
    short: str
    what: str
    color: str
    linestyle: LineStyleType
    marker: str
    linewidth: float
    zorder: int


#: drawn widest first, so a design on top of another leaves its edge visible
STYLES: dict[str, Style] = {
    "pooled-pmd-model": Style("pooled", "v16 CMA pool, no fallback (drained: VM_FAULT_OOM)",
                              "tab:red", "-", "s", 5.0, 2),
    "pmd-buddy-model": Style("pmd-buddy", "order-9 buddy chunks, order-0 when none is free",
                             "tab:green", "--", "^", 3.0, 3),
    "pooled-pmd-model+fallback": Style("pooled+fallback", "v16 pool + the order-0 fallback "
                                       "proposed in review", "tab:orange", ":", "x", 1.8, 4),
    "page-model": Style("page", "one order-0 page per fault (merged design)",
                        "tab:blue", "-", "o", 1.6, 5),
}
_OTHER = Style("?", "", "tab:gray", "-", ".", 1.5, 6)
KERNEL = Style("kernel", "measured on this kernel", "black", "-", "D", 1.2, 7)

#: (tag, left-axis label) per row, top to bottom
ROWS = (
    ("splits", "direct-map level-2 splits\n(2 MiB entries split to 4 KiB)"),
    ("free2m", "free 2 MiB blocks outside CMA\n(the pool's CMA area not counted)"),
    ("failures", "failed secret faults\n(so far)"),
    ("overcharge", "memcg over-charge, MiB\n(charged beyond pages in use)"),
    ("waste", "pool waste, MiB\n(held, holding no secret page)"),
)
MiB = 1 << 20


def style(model: str) -> Style:
    return STYLES.get(model, _OTHER)


def _value_at(series: Series, x: int) -> int:
    y = series[0][1]
    for sx, sy in series:
        if sx > x:
            break
        y = sy
    return y


def _extend(series: Series, end: int) -> list[tuple[int, int]]:
    """The step series held at its last value up to ``end`` pages requested."""
    out = list(series) or [(0, 0)]
    if out[-1][0] < end:
        out.append((end, out[-1][1]))
    return out


def coinciding(curves: dict[str, list[tuple[int, int]]]) -> list[list[str]]:
    """Groups of two or more curves equal as step functions over the same range."""
    groups: list[list[str]] = []
    for name, series in curves.items():
        xs = {x for x, _ in series}
        for g in groups:
            other = curves[g[0]]
            if other[-1][0] != series[-1][0]:
                continue
            grid = sorted(xs | {x for x, _ in other})
            if all(_value_at(series, x) == _value_at(other, x) for x in grid):
                g.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def panel_series(r: ModelResult, tag: str) -> list[tuple[int, int]]:
    """What row ``tag`` plots for ``r``: (pages requested, value), to the run's end."""
    end = r.pages_requested
    if tag == "splits":
        return _extend(r.series, end)
    if tag == "free2m":
        return _extend(r.free_2m_series, end)
    if tag == "failures":
        return _extend(r.failure_series, end)
    if tag == "overcharge":
        return _extend(r.overcharge_series, end)
    return _extend(r.waste_series, end)


def _draw(ax: Axes, model: str, series: list[tuple[int, int]], scale: float, k: int) -> Line2D:
    s = style(model)
    xs = [x for x, _ in series]
    ys = [y / scale for _, y in series]
    every = max(1, len(xs) // 8)
    (line,) = ax.step(xs, ys, where="post", label=model, color=s.color, linestyle=s.linestyle,
                      linewidth=s.linewidth, zorder=s.zorder, marker=s.marker, markersize=5,
                      markevery=(min(k * max(1, every // 4), len(xs) - 1), every),
                      alpha=0.55 if s.linewidth >= 5 else 1.0)
    return line


class _Notes:
    """Boxed notes stacked down from a panel's top left corner, in the
    headroom kept free above the curves (:data:`_HEADROOM`)."""

    def __init__(self, ax: Axes) -> None:
        self.ax = ax
        self.y = 0.97

    def add(self, text: str, color: str = "0.2") -> None:
        t = self.ax.text(0.03, self.y, text, transform=self.ax.transAxes, ha="left", va="top",
                         fontsize=6.5, color=color, zorder=10,
                         bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.8",
                               "alpha": 0.9})
        t.set_in_layout(False)  # a note is inside its panel: it sizes nothing
        self.y -= 0.085 * (text.count("\n") + 1)


def _names(models: Sequence[str]) -> str:
    return " = ".join(style(m).short for m in models)


def _scaled(factor: float) -> tuple[Callable[[ArrayLike], ArrayLike],
                                     Callable[[ArrayLike], ArrayLike]]:
    """A secondary axis ``factor`` times the primary one, and back."""
    return (lambda y: np.asarray(y) * factor, lambda v: np.asarray(v) / factor)


def _share_axis(ax: Axes, regions: int, label: str) -> None:
    sec = ax.secondary_yaxis("right", functions=_scaled(100 / regions))
    sec.set_ylabel(label, fontsize=8)
    sec.set_label("share")


#: the curves take the lower part of every panel, the notes the rest
_HEADROOM = 1.65


def _scenario_panel(ax: Axes, tag: str, results: list[ModelResult]) -> None:
    scale = MiB if tag in ("overcharge", "waste") else 1
    curves = {r.model: panel_series(r, tag) for r in results}
    for k, r in enumerate(results):
        _draw(ax, r.model, curves[r.model], scale, k)
    end = max(r.pages_requested for r in results)
    ax.set_xlim(-0.02 * end, end * 1.02)
    ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]) * _HEADROOM)
    ax.grid(alpha=0.3)
    notes = _Notes(ax)
    if tag == "failures":
        for r in results:
            if r.oom_kills:
                notes.add(f"{style(r.model).short}: {r.oom_kills:,} OOM-killed (VM_FAULT_OOM)",
                          style(r.model).color)
            elif r.allocation_failures:
                notes.add(f"{style(r.model).short}: {r.allocation_failures:,} refused",
                          style(r.model).color)
    if tag == "free2m":
        for r in results:
            if r.min_free_2m_blocks == 0:
                x = next((x for x, y in curves[r.model] if y == 0), end)
                after = (f", then {r.fallback_faults:,} order-0 pages" if r.fallback_faults
                         else "")
                notes.add(f"{style(r.model).short}: no free 2 MiB block left\nby {x:,} "
                          f"pages{after}", style(r.model).color)
    if tag == "overcharge":
        ratios = [f"{style(r.model).short} x{r.worst_memcg_charge_ratio:,.0f}"
                  for r in results if r.worst_memcg_charge_ratio > 1.05]
        if ratios:
            notes.add("worst memcg, charged / used:\n" + ", ".join(ratios))
    for group in coinciding(curves):
        zero = all(y == 0 for _, y in curves[group[0]])
        head = {"failures": "no failures: ", "splits": "no level-2 split: "}.get(tag, "")
        notes.add((head if zero and head else "coincide: ") + _names(group))


def _designs(sub: SubFigure | Figure, results: Sequence[ModelResult]) -> None:
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    axes = sub.subplots(len(ROWS), len(scenarios), squeeze=False, sharex="col")
    regions = max(r.machine_2m_regions for r in results) or 1
    for col, scenario in enumerate(scenarios):
        rs = [r for r in results if r.scenario == scenario]
        for row, (tag, label) in enumerate(ROWS):
            ax = axes[row][col]
            ax.set_label(f"{tag}:{scenario}")
            _scenario_panel(ax, tag, rs)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if tag in ("splits", "free2m") and col == len(scenarios) - 1:
                _share_axis(ax, regions, f"% of the machine's\n{regions:,} 2 MiB regions")
            elif tag in ("splits", "free2m"):
                _share_axis(ax, regions, "")
        axes[0][col].set_title(scenario)
        axes[-1][col].set_xlabel("secret pages requested")
    models = list(dict.fromkeys(r.model for r in results))
    handles = [Line2D([], [], color=style(m).color, linestyle=style(m).linestyle,
                      marker=style(m).marker, linewidth=min(style(m).linewidth, 3.0),
                      label=f"{m}: {style(m).what}") for m in models]
    sub.legend(handles=handles, loc="outside upper center", ncols=2, fontsize=8, frameon=False)


def _kernel(sub: SubFigure | Figure, points: Sequence[KernelPoints]) -> None:
    top, bottom = sub.subplots(2, 1)
    top.set_label("kernel:splits")
    bottom.set_label("kernel:regions")
    page = style("page-model")
    gib = 4096 / (1 << 30)
    for k, p in enumerate(points):
        dashes = "-" if k == 0 else "--"
        xs = [s.pages * gib for s in p.steps]
        share = 100 / p.machine_2m_regions
        (k1, m1), (k2, m2) = p.phase("grow"), p.phase("again")
        # the measured points: small filled markers on a thin line; the
        # simulation: open circles on a thick line, so that both show where
        # they coincide
        top.plot(xs, [s.kernel_l2 * share for s in p.steps], color=KERNEL.color,
                 linestyle=dashes, marker=KERNEL.marker, markersize=4, linewidth=1.0, zorder=6,
                 label=f"kernel, {p.condition}: {k1:,} + {k2:,} new splits, measured")
        top.plot(xs, [s.model_l2 * share for s in p.steps], color=page.color, linestyle=dashes,
                 marker="o", markersize=7, markerfacecolor="none", linewidth=2.2, zorder=5,
                 label=f"model, {p.condition}: {m1:,} + {m2:,} page-model, simulated")
        names = [s.step.replace("grow to ", "").replace("again to ", "again ") for s in p.steps]
        at = [i + (k - (len(points) - 1) / 2) * 0.3 for i in range(len(names))]
        bottom.plot(at, [max(s.kernel_regions, 0.5) for s in p.steps], linestyle="none",
                    marker=KERNEL.marker, color="black", markerfacecolor="black" if k == 0
                    else "none", label=f"kernel ({p.condition})")
        bottom.plot(at, [max(s.model_regions, 0.5) for s in p.steps], linestyle="none",
                    marker="o", color=page.color, markerfacecolor=page.color if k == 0
                    else "none", label=f"page-model ({p.condition})")
        bottom.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    steps = points[0].steps
    first = next((s.pages * gib for s in steps if s.step == "free"), None)
    if first is not None:
        top.axvspan(0, first, color="0.93", zorder=0)
        top.text(first / 2, 0.97, "first 2 GiB", transform=top.get_xaxis_transform(),
                 ha="center", va="top", fontsize=8)
        top.text(first * 1.5, 0.97, "free, 256 one-page\nregions, 2 GiB again",
                 transform=top.get_xaxis_transform(), ha="center", va="top", fontsize=8)
    regions = {p.machine_2m_regions for p in points}
    if len(regions) == 1:
        (n,) = regions
        top.secondary_yaxis("right", functions=_scaled(n / 100)).set_ylabel(
            "new level-2 splits", fontsize=8)
    top.set_ylim(bottom=0, top=max(1.0, top.get_ylim()[1]) * 1.3)
    top.set_xlabel("secret memory touched so far, GiB")
    top.set_ylabel("new level-2 splits,\n% of the machine's 2 MiB regions", fontsize=8)
    top.set_title("churn sequence: kernel vs page model", fontsize=10)
    top.legend(fontsize=7, loc="center left", bbox_to_anchor=(0.0, 0.62))
    bottom.set_yscale("log")
    bottom.set_ylabel("2 MiB regions the step's\npages landed in", fontsize=8)
    bottom.set_title("placement per step (0 drawn at 0.5)", fontsize=9)
    bottom.legend(fontsize=7, loc="best")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    sub.suptitle("The kernel, measured by `secretvault model churn`\n" + "\n".join(
        f"{p.source}: {p.regions_split_before:,} of {p.machine_2m_regions:,} 2 MiB regions "
        "split before" for p in points), fontsize=9)


def figure(results: Sequence[ModelResult], *, title: str,
           kernel: Sequence[KernelPoints] = ()) -> Figure:
    """The chart as a matplotlib figure (not yet drawn or saved)."""
    scenarios = len(dict.fromkeys(r.scenario for r in results))
    width = 3.6 * scenarios + (5.2 if kernel else 0)
    fig = Figure(figsize=(width, 15.5), layout="constrained")
    if kernel:
        subs = fig.subfigures(1, 2, width_ratios=[3.6 * scenarios, 5.2], wspace=0.02,
                              squeeze=False)
        _designs(subs[0][0], results)
        _kernel(subs[0][1], kernel)
    else:
        _designs(fig, results)
    fig.suptitle(title, fontsize=12)
    return fig


def plot(results: Sequence[ModelResult], path: str, *, title: str,
         kernel: Sequence[KernelPoints] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    figure(results, title=title, kernel=kernel).savefig(path, dpi=90)
