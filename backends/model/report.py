"""``secretvault model compare``: run the scenarios on the three designs, tabulate, chart.

Wired into the CLI through :func:`configure_parser` and :func:`run`; also
runs alone: ``python -m secretvault.backends.model.report --help``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict

from secretvault.backends.model._churn_points import (
    KernelPoints,
    KernelPointsError,
    load_kernel_points,
)
from secretvault.backends.model._machine import DEFAULT_CMA, DEFAULT_MEMORY
from secretvault.backends.model.scenarios import (
    COMPARED,
    SCENARIOS,
    ModelResult,
    ScenarioConfig,
    run_scenario,
)

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``4G``, ``256MiB``, ``512m``, ``1048576`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4G or 256M)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _mib(n: int) -> str:
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{n >> 30} GiB"
    return f"{n / (1 << 20):,.0f} MiB" if n >= 1 << 20 or n == 0 else f"{n >> 10} KiB"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="scenario to run (repeatable; default: all)",
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=100_000,
        metavar="N",
        help="keys (keyring, churn, tenants) or processes (fork-bomb); default 100000",
    )
    parser.add_argument(
        "--memory",
        type=parse_size,
        default=DEFAULT_MEMORY,
        metavar="SIZE",
        help="simulated RAM (default 4G)",
    )
    parser.add_argument(
        "--cma",
        type=parse_size,
        default=DEFAULT_CMA,
        metavar="SIZE",
        help="the pooled model's CMA area, reserved at boot (default 256M)",
    )
    parser.add_argument(
        "--fallback",
        action="store_true",
        help="also run the v16 pool with the order-0 fallback proposed in review (never in v16)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the background workload")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="write a chart of level-2 splits (as a share of the machine's 2 MiB regions), "
        "free 2 MiB blocks, failures, memcg over-charge and pool waste against secret pages "
        "(.png/.svg; needs matplotlib)",
    )
    parser.add_argument(
        "--kernel-points",
        action="append",
        metavar="FILE",
        help="with --plot: also chart the churn sequence as measured on the kernel, from the "
        "JSON `secretvault model churn --json FILE` wrote (repeatable; docs/data/churn*.json)",
    )


def compare(
    scenarios: Sequence[str], models: Sequence[str], cfg: ScenarioConfig
) -> list[ModelResult]:
    return [run_scenario(s, m, cfg) for s in scenarios for m in models]


_COLUMNS = (
    "scenario",
    "model",
    "secret pages",
    "L2 splits",
    "L3 splits",
    "pages/split",
    "DirectMap4k",
    "DirectMap2M",
    "DirectMap1G",
    "pool waste",
    "failures",
    "memcg over-charge",
    "free 2M blocks",
)


def _row(r: ModelResult) -> list[str]:
    pps = r.pages_per_split
    row = [
        r.scenario,
        r.model,
        f"{r.faults:,}" + (f" of {r.pages_requested:,}" if r.faults != r.pages_requested else ""),
        f"{r.level2_splits:,}",
        f"{r.level3_splits:,}",
        "-" if pps is None else f"{pps:,.0f}",
        _mib(r.directmap_4k),
        _mib(r.directmap_2m),
        _mib(r.directmap_1g),
        _mib(r.peak_pool_waste_bytes),
        f"{r.allocation_failures:,}",
        _mib(r.peak_memcg_overcharge_bytes)
        + (f" (x{r.worst_memcg_charge_ratio:,.0f})" if r.worst_memcg_charge_ratio > 1.05 else ""),
        f"{r.free_2m_series[0][1]:,}, low {r.min_free_2m_blocks:,}, "
        f"end {r.free_2m_series[-1][1]:,}",
    ]
    if r.oom_kills:
        row[10] += f" ({r.oom_kills:,} OOM-killed)"
    elif r.fallback_faults:
        row[10] += f" ({r.fallback_faults:,} order-0 fallbacks)"
    return row


def markdown_table(results: Sequence[ModelResult]) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    return "\n".join(lines)


def print_table(results: Sequence[ModelResult], cfg: ScenarioConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"secret memory models: {_mib(cfg.memory_bytes)} RAM, {_mib(cfg.cma_bytes)} CMA "
            f"(pooled), N={cfg.keys:,}, seed {cfg.seed}"
        ),
        caption=(
            "secret pages: faults served (of requested); pool waste, over-charge: peaks; "
            "(xR): worst memcg's charge / use; OOM-killed: v16's VM_FAULT_OOM; free 2M "
            "blocks (outside CMA): at start, lowest, at end. protection: model (simulation)"
        ),
    )
    for c in _COLUMNS:
        left = c in ("scenario", "model")
        table.add_column(c, justify="left" if left else "right", no_wrap=left)
    for r in results:
        table.add_row(*_row(r))
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a pipe or a file: do not wrap at 80 columns
    console.print(table)


def plot(
    results: Sequence[ModelResult],
    path: str,
    cfg: ScenarioConfig | None = None,
    kernel: Sequence[KernelPoints] = (),
) -> None:
    """Write the chart (``backends/model/_chart.py`` says what it shows)."""
    try:
        from secretvault.backends.model import _chart
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'secretvault[plot]'") from None
    cfg = cfg if cfg is not None else ScenarioConfig()
    title = (
        f"Secret memory, three designs on a model machine: {_mib(cfg.memory_bytes)} RAM, "
        f"~50% background, {_mib(cfg.cma_bytes)} CMA for the pool, N={cfg.keys:,}, "
        f"seed {cfg.seed}" + ("  |  right: the churn sequence on the kernel" if kernel else "")
    )
    _chart.plot(results, path, title=title, kernel=kernel)


def run(args: argparse.Namespace) -> int:
    scenarios: list[str] = args.scenario or list(SCENARIOS)
    models = list(COMPARED)
    if args.fallback:
        models.append("pooled-pmd-model+fallback")
    if args.keys <= 0:
        print("--keys must be positive", file=sys.stderr)
        return 2
    if args.cma >= args.memory:
        print("--cma must be smaller than --memory", file=sys.stderr)
        return 2
    if args.kernel_points and not args.plot:
        print("--kernel-points goes with --plot FILE", file=sys.stderr)
        return 2
    try:
        kernel = [load_kernel_points(p) for p in args.kernel_points or ()]
    except KernelPointsError as e:
        print(f"--kernel-points: {e}", file=sys.stderr)
        return 2
    cfg = ScenarioConfig(
        keys=args.keys, memory_bytes=args.memory, cma_bytes=args.cma, seed=args.seed
    )
    results = compare(scenarios, models, cfg)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    elif args.markdown:
        print(markdown_table(results))
    else:
        print_table(results, cfg)
    if args.plot:
        plot(results, args.plot, cfg, kernel)
        if not args.json:
            print(f"chart written to {args.plot}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="secretvault model compare",
        description="Compare the page-by-page, pooled-PMD (v16) and PMD-buddy models.",
    )
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
