"""What the command prints: keys and stats as tables, and as JSON.

The key list is plain aligned text (``keys list`` is a quick client call,
so it loads no rich); the other views are rich tables, and rich loads only
when one is drawn.  Piped output is not cut to rich's default 80 columns.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from secretvault.vault.cli.files import b64
from secretvault.vault.sizes import format_bytes

if TYPE_CHECKING:
    from rich.table import Table

    from secretvault.clients import Key, Stats


def console() -> Any:
    from rich.console import Console

    # piped output is not cut to rich's default 80 columns
    return Console(highlight=False, soft_wrap=False,
                   width=None if sys.stdout.isatty() else 160)


def emit(renderable: Any, out: Any = None) -> None:
    """Print ``renderable``; piped, each line without the spaces rich pads cells with."""
    out = out or console()
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def _time(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


# --- keys ----------------------------------------------------------------------------------


def key_json(key: Key) -> dict[str, Any]:
    return {
        "name": key.name,
        "type": key.type,
        "created": key.created.isoformat(),
        "primary_version": key.primary_version,
        "min_decryption_version": key.min_decryption_version,
        "labels": dict(key.labels),
        "versions": [
            {
                "version": v.version,
                "created": v.created.isoformat(),
                "public_key": b64(v.public_key) if v.public_key else None,
                **({"damaged": v.damaged} if v.damaged else {}),
            }
            for v in key.versions
        ],
    }


def show_key(key: Key) -> None:
    from rich.console import Group
    from rich.table import Table

    lines = [f"[bold]{key.name}[/bold]  ({key.type})",
             f"  created                 {_time(key.created)}",
             f"  primary version         {key.primary_version}",
             f"  min decryption version  {key.min_decryption_version}"]
    if key.labels:
        lines.append("  labels                  "
                     + ", ".join(f"{k}={v}" for k, v in sorted(key.labels.items())))
    table = Table("version", "created", "state", box=None, pad_edge=False)
    table.add_column("public key (base64)", overflow="fold")
    for v in key.versions:
        state = "primary" if v.version == key.primary_version else ""
        if v.version < key.min_decryption_version:
            state = "below min version"
        if v.damaged:
            state = f"[red]damaged: {v.damaged}[/red]"
        table.add_row(str(v.version), _time(v.created), state,
                      b64(v.public_key) if v.public_key else "-")
    emit(Group(*lines, table))


def plain_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns two spaces apart, each as wide as its widest cell; no trailing spaces."""
    lines = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                   .rstrip() + "\n" for line in lines)


def show_keys(keys: list[Key]) -> None:
    sys.stdout.write(plain_table(
        ("name", "type", "primary", "versions", "created", "labels"),
        ((k.name, k.type, str(k.primary_version), str(len(k.versions)), _time(k.created),
          ", ".join(f"{a}={b}" for a, b in sorted(k.labels.items()))) for k in keys),
    ))


# --- stats ---------------------------------------------------------------------------------


def _signed(n: int) -> str:
    """A change in bytes: "+16.0 MiB", "-2.0 MiB", "no change"."""
    if not n:
        return "no change"
    return ("+" if n > 0 else "-") + format_bytes(abs(n))


def _kv(title: str, rows: list[tuple[str, str]]) -> Table:
    """A section of name-value rows under a bold title."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False, box=None,
              pad_edge=False, title_style="bold")
    t.add_column(style="dim")
    t.add_column()
    for a, b in rows:
        t.add_row(a, b)
    return t


def _columns(title: str, *headers: str) -> Table:
    """A section with a header row under a bold title."""
    from rich.table import Table

    return Table(*headers, title=title, title_justify="left", title_style="bold", box=None,
                 pad_edge=False)


def _heading(s: Stats) -> list[Any]:
    from rich.text import Text

    style = "bold green" if s.protection == "secretmem" else "bold red"
    lines = [Text.assemble(("secretvault", "bold"), f"  backend {s.backend}, protection ",
                           (s.protection, style))]
    if s.protection != "secretmem":
        lines.append(Text("keys are NOT in secret memory: this backend is a model", "red"))
    f = s.feed
    if f is not None:  # one line: the sections below must still fit a terminal
        lag = f", last lag {f.last_lag_seconds * 1000:.1f} ms" if f.applied else ""
        lines.append(Text.assemble(
            f"store {f.store}: ", ("reachable", "green") if f.store_reachable else
            (f"UNREACHABLE ({f.error})", "bold red"),
            f"; feed at change {f.position:,}, {f.applied:,} applied from others{lag}"))
    if s.worker is not None:
        w = s.worker
        lines.append(Text(f"worker {w.index} of {w.count}, pid {s.pid} (supervisor pid "
                          f"{w.supervisor_pid}): every figure is this worker's own; each "
                          "worker holds its own copy of the keys"))
    lines.append(Text(""))
    return lines


def _secret_memory(s: Stats) -> Table:
    keys = ", ".join(f"{n:,} {t}" for t, n in sorted(s.keys_by_type.items()) if n) or "none"
    return _kv("Secret memory", [
        ("keys", keys),
        # every used slot: the keys' versions, and the vault's own secrets
        ("key bytes", f"{format_bytes(s.key_bytes)}, with the vault's own (KEK, row-MAC "
         "key, import key, HMAC scratch)"),
        ("regions", str(s.regions)),
        ("pages mapped", str(s.pages_mapped)),
        ("pages resident", str(s.pages_resident)),
        ("bytes locked", format_bytes(s.bytes_locked)),
        ("hibernation inhibited", "yes" if s.hibernation_inhibited else "no"),
    ])


def _memlock(s: Stats) -> Table:
    ml = s.memlock
    headroom_keys = ", ".join(f"{n:,} {t}" for t, n in sorted(ml.headroom_keys.items()))
    return _kv("Memlock (RLIMIT_MEMLOCK)", [
        ("soft limit", format_bytes(ml.soft)),
        ("hard limit", format_bytes(ml.hard)),
        ("locked (VmLck)", format_bytes(ml.locked)),
        ("headroom", "unlimited" if ml.cap_ipc_lock
         else format_bytes(ml.headroom_bytes)),
        ("headroom in keys", headroom_keys or "unlimited"),
        ("CAP_IPC_LOCK", "yes (limit bypassed)" if ml.cap_ipc_lock else "no"),
    ])


def _process(s: Stats) -> Table | None:
    p = s.process
    if p is None:
        return None
    scope = "absent (no Yama)" if p.yama_ptrace_scope is None else str(p.yama_ptrace_scope)
    caps = ", ".join(c.removeprefix("cap_") for c in p.capabilities_effective) or "none"
    return _kv("Debugger exposure", [
        ("yama ptrace_scope", scope),
        ("root can attach", "yes (can read every key)" if p.root_can_attach else "no"),
        ("server's user can attach", p.user_can_attach),
        ("traced now", f"YES, by pid {p.tracer_pid}" if p.tracer_pid else "no"),
        ("on a tracer", f"zero and exit (every {p.tracer_check_seconds:g} s)"
         if p.stop_on_tracer else "keep serving"),
        ("capabilities", caps),
    ])


def _memcg(s: Stats) -> Table | None:
    cg = s.memcg
    if cg is None:
        return None

    def known(n: int | None) -> str:
        """A figure the cgroup may not report: ``?`` when it does not."""
        return "?" if n is None else format_bytes(n)

    return _kv(f"Memory cgroup v{cg.version}", [
        ("path", cg.path or "/"),
        ("usage", known(cg.usage)),
        ("limit", format_bytes(cg.limit)),
        ("page cache (file)", known(cg.file)),
        ("mapped file", known(cg.file_mapped)),
        ("unevictable", known(cg.unevictable)),
    ])


def _direct_map(s: Stats) -> Table:
    dm = s.direct_map
    rows = [
        ("counters", "kernel, since the server started" if dm.source == "kernel"
         else f"{dm.source} (simulated)"),
        ("level-2 splits (2 MiB -> 4 KiB)", str(dm.level2_splits)),
        ("level-3 splits (1 GiB -> 2 MiB)", str(dm.level3_splits)),
        ("DirectMap4k", f"{format_bytes(dm.directmap_4k)} ({_signed(dm.directmap_4k_delta)})"),
        ("DirectMap2M", f"{format_bytes(dm.directmap_2m)} ({_signed(dm.directmap_2m_delta)})"),
        ("DirectMap1G", f"{format_bytes(dm.directmap_1g)} ({_signed(dm.directmap_1g_delta)})"),
    ]
    if dm.distinct_2m_regions is not None:
        rows.append(("2 MiB regions holding vault pages", str(dm.distinct_2m_regions)))
    if dm.distinct_1g_regions is not None:
        rows.append(("1 GiB regions holding vault pages", str(dm.distinct_1g_regions)))
    return _kv("Direct map", rows)


def _size_classes(s: Stats) -> Table | None:
    if not s.size_classes:
        return None
    t = _columns("Size classes", "slot size", "pages", "slots used", "slots free")
    for c in s.size_classes:
        t.add_row(f"{c.size} B", str(c.pages), str(c.slots_used), str(c.slots_free))
    return t


def _operations(s: Stats) -> Table | None:
    if not s.operations:
        return None
    t = _columns("Operations", "operation", "result", "count")
    for op in s.operations:
        t.add_row(op.operation, op.result, f"{op.count:,}")
    return t


def _quotas(s: Stats) -> Table | None:
    if not s.identity_quotas and not s.max_versions_per_key:
        return None
    most = f"{s.max_versions_per_key:,}" if s.max_versions_per_key else "no limit"
    t = _columns(f"Quotas (versions per key: {most})", "identity", "secret memory", "quota")
    for q in s.identity_quotas:
        t.add_row(q.identity, format_bytes(q.secret_bytes),
                  "unlimited" if q.budget_bytes is None else format_bytes(q.budget_bytes))
    return t


def _extra(s: Stats) -> Table | None:
    if not s.extra:
        return None
    return _kv(f"{s.backend} details", [(k, f"{v:g}") for k, v in sorted(s.extra.items())])


#: the sections of the stats view, in order; a section with nothing to show is left out
SECTIONS: tuple[Callable[[Stats], Table | None], ...] = (
    _secret_memory, _memlock, _process, _memcg, _direct_map, _size_classes, _quotas,
    _operations, _extra,
)


def render_stats(s: Stats, *, side_by_side: bool = True) -> Any:
    """The stats as rich tables: a heading, then one table per section.

    ``side_by_side``: the sections flow into as many columns as the width
    allows (so ``--watch`` fits a terminal); else they are stacked, one
    under the other (piped output: stable lines for grep and diff).
    """
    from rich.columns import Columns
    from rich.console import Group
    from rich.text import Text

    parts = [part for section in SECTIONS if (part := section(s)) is not None]
    if side_by_side:
        return Group(*_heading(s), Columns(parts, padding=(1, 6)))
    stacked: list[Any] = []
    for part in parts:
        stacked += [part, Text("")]
    return Group(*_heading(s), *stacked[:-1])


def show_stats(s: Stats) -> None:
    """The stats view: side by side on a terminal, stacked when piped."""
    out = console()
    emit(render_stats(s, side_by_side=out.is_terminal), out)


def _json(value: Any) -> Any:
    """``value`` with the wire message's field names, absent fields left out,
    and every integer a JSON number (proto3's JSON form writes 64-bit ones as
    strings; ``--json`` did until issue 13)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json(v) for f in dataclasses.fields(value)
                if (v := getattr(value, f.name)) is not None}
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    return value


def stats_json(s: Stats) -> dict[str, Any]:
    result: dict[str, Any] = _json(s)
    return result
