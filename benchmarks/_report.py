"""Rows, targets, the machine description, and the three outputs.

The benchmark measures; this module only arranges what was measured: one
rich table (figure, latency, peer, peer figure, ratio, target), a JSON
document for machines, and a bar chart.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from benchmarks._measure import Measure, per_round_ratio


@dataclass
class Target:
    """A target of the issue: ``ratio >= threshold`` (``>`` when strict, ``<=`` for a cost)."""

    name: str
    threshold: float
    strict: bool = False  # "beats": ratio > threshold
    at_most: bool = False  # a cost: ratio <= threshold

    def verdict(self, ratio: float) -> str:
        if math.isnan(ratio):
            return "MISSING"
        if self.at_most:
            ok = ratio <= self.threshold
        else:
            ok = ratio > self.threshold if self.strict else ratio >= self.threshold
        return "PASS" if ok else "MISS"

    @property
    def text(self) -> str:
        op = "≤" if self.at_most else (">" if self.strict else "≥")
        return f"{op}{self.threshold:g}x"


@dataclass
class Row:
    section: str
    label: str
    figure: Measure
    peer: Measure | None = None
    target: Target | None = None
    #: a precomputed ratio (e.g. best of several forms); else per-round ratio
    ratio_override: float | None = None
    note: str = ""
    #: what the table calls the peer (default: its measure's label)
    peer_label: str = ""

    @property
    def ratio(self) -> float:
        if self.ratio_override is not None:
            return self.ratio_override
        if self.peer is None or self.figure.missing or self.peer.missing:
            return float("nan")
        if not self.figure.rounds or not self.peer.rounds:
            return float("nan")
        return per_round_ratio(self.figure, self.peer)

    @property
    def verdict(self) -> str:
        return self.target.verdict(self.ratio) if self.target else ""


@dataclass
class Report:
    machine: dict[str, Any]
    config: dict[str, Any]
    measures: dict[str, Measure]
    rows: list[Row] = field(default_factory=list)
    memory: dict[str, Any] | None = None
    memory_missing: str | None = None
    title: str = "secretvault against its peers"

    # --- JSON ---------------------------------------------------------------

    def as_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "machine": self.machine,
            "config": self.config,
            "measures": {
                k: {
                    "label": m.label,
                    "unit": m.unit,
                    "median": num(m.value),
                    "rounds": m.rounds,
                    "latency_samples": len(m.latencies_ns),
                    "p50_us": num(m.p50_us),
                    "p99_us": num(m.p99_us),
                    "cpu_us_per_op": num(m.cpu_us),
                    "cpu_us_per_op_rounds": m.cpu_us_per_op,
                    "missing": m.missing,
                }
                for k, m in self.measures.items()
            },
            "rows": [
                {
                    "section": r.section,
                    "label": r.label,
                    "figure": r.figure.key,
                    "peer": r.peer.key if r.peer else None,
                    "ratio": num(r.ratio),
                    "target": r.target.text if r.target else None,
                    "verdict": r.verdict or None,
                    "note": r.note or None,
                }
                for r in self.rows
            ],
            "targets": [
                {"target": r.target.name, "ratio": num(r.ratio), "threshold": r.target.threshold,
                 "verdict": r.verdict, "figure": r.figure.key,
                 "peer": r.peer.key if r.peer else None}
                for r in self.rows
                if r.target is not None
            ],
            "memory": self.memory,
            "memory_missing": self.memory_missing,
        }

    def write_json(self, out: IO[str]) -> None:
        json.dump(self.as_json(), out, indent=2)
        out.write("\n")

    def emit(self, *, as_json: bool) -> int:
        """The table on stdout, or with ``as_json`` the JSON there and the table on
        stderr; the exit status: 1 when no measure could run, else 0."""
        if as_json:
            self.write_json(sys.stdout)
            self.print(sys.stderr)
        else:
            self.print()
        return 1 if all(m.missing for m in self.measures.values()) else 0

    # --- the table ------------------------------------------------------------

    def missing_reasons(self) -> list[str]:
        """Each distinct reason a figure is missing, in table order."""
        reasons: list[str] = []
        for r in self.rows:
            for m in (r.figure, r.peer):
                if m is not None and m.missing and m.missing not in reasons:
                    reasons.append(m.missing)
        return reasons

    def _figure(self, m: Measure, reasons: list[str]) -> str:
        if m.missing:
            return f"[red]MISSING[/red] [{reasons.index(m.missing) + 1}]"
        return _figure(m)

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"{self.title} (medians over rounds; "
                        "ratios: median of per-round ratios)", title_justify="left")
        reasons = self.missing_reasons()
        t.add_column("measurement", no_wrap=True)
        t.add_column("figure", justify="right", no_wrap=True)
        t.add_column("p50 / p99", justify="right", no_wrap=True)
        t.add_column("CPU/op", justify="right", no_wrap=True)
        t.add_column("peer", no_wrap=True)
        t.add_column("peer figure", justify="right", no_wrap=True)
        t.add_column("peer CPU/op", justify="right", no_wrap=True)
        t.add_column("ratio", justify="right", no_wrap=True)
        t.add_column("target", justify="left", no_wrap=True)
        section = None
        for r in self.rows:
            if r.section != section:
                if section is not None:
                    t.add_section()
                t.add_row(f"[bold]{r.section}[/bold]")
                section = r.section
            t.add_row(
                "  " + r.label,
                self._figure(r.figure, reasons),
                _latency(r.figure),
                _cpu(r.figure),
                (r.peer_label or r.peer.label) if r.peer else "",
                self._figure(r.peer, reasons) if r.peer else "",
                _cpu(r.peer) if r.peer else "",
                _ratio(r.ratio),
                _verdict(r),
            )
        return t

    def print(self, file: IO[str] | None = None) -> None:
        from rich.console import Console

        console = Console(file=file, width=200)
        m = self.machine
        console.print(
            f"[bold]Machine:[/bold] {m['cpu']} ({m['cores']} cores), {m['memory_gib']} GiB, "
            f"Linux {m['kernel']}, {m['os']}; Python {m['python']}, grpcio {m['grpcio']}, "
            f"PyNaCl {m['pynacl']}; {m['user']}; load average {m['loadavg_start']} at start, "
            f"{m.get('loadavg_end', '?')} at end"
        )
        c = self.config
        console.print(
            f"[bold]Run:[/bold] {c['rounds']} rounds x {c['seconds']} s per form"
            f"{' (--quick)' if c['quick'] else ''}, {c['elapsed_s']:.0f} s in all"
        )
        console.print(self.table())
        console.print("  CPU/op: CPU time per operation of the process doing the work (the "
                      "server, the agent, or this process for in-process forms), median over "
                      "rounds; it is far less sensitive to other load than the rate.")
        for i, reason in enumerate(self.missing_reasons(), 1):
            console.print(f"  [red]MISSING[/red] [{i}] {reason}")
        if self.memory_missing:
            console.print(f"  secret memory per key: [red]MISSING[/red]: {self.memory_missing}")
        for r in self.rows:
            if r.note:
                console.print(f"  [dim]{r.label.strip()}: {r.note}[/dim]")

    # --- the plot ---------------------------------------------------------------

    def plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colours = {"sv": "#1f77b4", "echo": "#aaaaaa", "crypto": "#2ca02c", "peer": "#d62728",
                   "diag": "#9ecae1"}
        items = [(m.label, m.value, colours.get(k.split(".")[0], "#9467bd"))
                 for k, m in self.measures.items()
                 if not m.missing and m.rounds and m.unit == "ops/s"]
        if not items:
            return
        fig, ax = plt.subplots(figsize=(11, 0.32 * len(items) + 1.5))
        labels = [i[0] for i in items]
        ax.barh(range(len(items)), [i[1] for i in items], color=[i[2] for i in items])
        ax.set_yticks(range(len(items)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("operations per second (median over rounds, log scale)")
        ax.set_title(f"secretvault and its peers — {self.machine['cpu']}, "
                     f"{self.machine['cores']} cores, Linux {self.machine['kernel']}", fontsize=9)
        for i, (_, v, _c) in enumerate(items):
            ax.text(v, i, f" {_rate(v)}", va="center", fontsize=6)
        from matplotlib.patches import Patch

        ax.legend(handles=[
            Patch(color=colours["sv"], label="secretvault"),
            Patch(color=colours["diag"], label="secretvault core in-process (no RPC)"),
            Patch(color=colours["echo"], label="bare grpcio echo"),
            Patch(color=colours["crypto"], label="in-process libsodium"),
            Patch(color=colours["peer"], label="ssh-agent / SoftHSM2"),
        ], loc="lower right", fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


# --- formatting -------------------------------------------------------------------


def _rate(v: float) -> str:
    if math.isnan(v):
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M/s"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k/s"
    return f"{v:.0f}/s"


def _figure(m: Measure) -> str:
    if m.missing:
        return f"[red]MISSING[/red]: {m.missing}"
    if not m.rounds:
        return "—"
    if m.unit == "ops/s":
        return _rate(m.value)
    v = m.value
    return f"{v:,.0f} {m.unit}" if float(v).is_integer() else f"{v:,.1f} {m.unit}"


def _latency(m: Measure) -> str:
    if m.missing or not m.latencies_ns:
        return ""
    return f"{_us(m.p50_us)} / {_us(m.p99_us)}"


def _cpu(m: Measure) -> str:
    if m.missing or not m.cpu_us_per_op:
        return ""
    return _us(m.cpu_us)


def _us(v: float) -> str:
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


def _ratio(r: float) -> str:
    return "—" if math.isnan(r) else f"{r:.2f}x"


def _verdict(r: Row) -> str:
    if r.target is None:
        return ""
    v = r.verdict
    colour = {"PASS": "green", "MISS": "red"}.get(v, "yellow")
    return f"{r.target.text} [{colour}]{v}[/{colour}]"


# --- the machine -------------------------------------------------------------------


def _first(path: str, pattern: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(pattern, line)
                if m:
                    return m.group(1).strip()
    except OSError:
        pass
    return "?"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _tool_version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine() -> dict[str, Any]:
    mem_kb = _first("/proc/meminfo", r"MemTotal:\s+(\d+)")
    return {
        "cpu": _first("/proc/cpuinfo", r"model name\s*:\s*(.*)"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kb) / (1 << 20)) if mem_kb.isdigit() else "?",
        "kernel": platform.release(),
        "os": _first("/etc/os-release", r'PRETTY_NAME="?([^"]*)"?'),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "pynacl": _version("pynacl"),
        "python_pkcs11": _version("python-pkcs11"),
        "openssh": _tool_version(["ssh", "-V"]),
        "softhsm": _tool_version(["softhsm2-util", "--version"]),
        "user": "root" if os.geteuid() == 0 else f"uid {os.geteuid()}",
        "loadavg_start": loadavg(),
    }
