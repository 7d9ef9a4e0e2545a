"""What the command prints: keys and stats as rich tables, and as JSON.

rich loads only when a table is drawn.  Piped output is not cut to rich's
default 80 columns.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
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
    from rich.table import Table

    out = console()
    out.print(f"[bold]{key.name}[/bold]  ({key.type})")
    out.print(f"  created                 {_time(key.created)}")
    out.print(f"  primary version         {key.primary_version}")
    out.print(f"  min decryption version  {key.min_decryption_version}")
    if key.labels:
        out.print("  labels                  "
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
    out.print(table)


def show_keys(keys: list[Key]) -> None:
    from rich.table import Table

    table = Table("name", "type", "primary", "versions", "created", "labels", box=None,
                  pad_edge=False)
    for k in keys:
        table.add_row(
            k.name, k.type, str(k.primary_version), str(len(k.versions)), _time(k.created),
            ", ".join(f"{a}={b}" for a, b in sorted(k.labels.items())),
        )
    console().print(table)


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
    lines.append(Text(""))
    return lines


def _secret_memory(s: Stats) -> Table:
    keys = ", ".join(f"{n:,} {t}" for t, n in sorted(s.keys_by_type.items()) if n) or "none"
    return _kv("Secret memory", [
        ("keys", keys),
        ("key bytes", format_bytes(s.key_bytes)),
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
    _secret_memory, _memlock, _memcg, _direct_map, _size_classes, _quotas, _operations,
    _extra,
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


def _int32_fields() -> frozenset[str]:
    """The names of the Stats message's 32-bit integer fields, from the wire schema.

    proto3's JSON form writes 64-bit integers as strings and 32-bit ones as
    numbers; ``--json`` has always printed that form.
    """
    from google.protobuf.descriptor import FieldDescriptor

    from secretvault.api._proto.secretvault.v1 import stats_pb2

    small = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32,
             FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_FIXED32,
             FieldDescriptor.TYPE_SFIXED32}
    return frozenset(
        f.name for m in stats_pb2.DESCRIPTOR.message_types_by_name.values()
        for f in m.fields if f.type in small
    )


def _json(value: Any, int32: frozenset[str], name: str = "") -> Any:
    """``value`` as the JSON form of the wire message has it: absent fields
    left out, 64-bit integers as strings (what ``--json`` has always printed)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json(v, int32, f.name) for f in dataclasses.fields(value)
                if (v := getattr(value, f.name)) is not None}
    if isinstance(value, tuple):
        return [_json(v, int32, name) for v in value]
    if isinstance(value, Mapping):
        return {k: _json(v, int32, name) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool) and name not in int32:
        return str(value)
    return value


def stats_json(s: Stats) -> dict[str, Any]:
    result: dict[str, Any] = _json(s, _int32_fields())
    return result
