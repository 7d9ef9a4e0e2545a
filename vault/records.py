"""The records a store holds, and how one stored ``keys`` row is read.

A :class:`KeyRecord` and its :class:`VersionRecord` are what the keyring
writes and what :meth:`~secretvault.vault.store.Store.load` returns; a row that
does not parse (corruption, an edit by hand) is returned with ``damaged``
naming what is wrong, never raised, so one bad row does not stop the vault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeGuard

#: the longest key name (``keys.NAME_RE``); the edge refuses a longer one
#: before anything else, so no key may be served under a longer name
MAX_NAME_LEN = 128
#: a key row whose name is NULL, or whose name cannot be served as it is (not
#: UTF-8 and over MAX_NAME_LEN once its bad bytes are escaped, or simply over
#: it), is served as this prefix and its rowid (stable while the file is not
#: VACUUMed); ':' is outside the key-name characters, so no key can be named
#: so, and the key can be deleted under this name
NULL_NAME = "damaged-row:"


@dataclass(frozen=True, slots=True)
class VersionRecord:
    version: int
    created: float
    public_key: bytes | None
    nonce: bytes
    sealed: bytes
    #: why the stored row does not parse (set by :meth:`Store.load` only)
    damaged: str | None = None
    #: the identity that made it, for its secret-memory quota (None: made
    #: before quotas, or in-process); not sealed: it moves quota, nothing else
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    type: str
    created: float
    primary_version: int
    min_decryption_version: int
    labels: Mapping[str, str] = field(default_factory=dict)
    versions: tuple[VersionRecord, ...] = ()
    #: the row MAC (see ``sealing.row_mac_message``) over this row and its
    #: versions; None in a row written before row MACs existed
    row_mac: bytes | None = None
    #: why the stored key row (or one of its version rows' numbers) does not
    #: parse; set by :meth:`Store.load` only, never written
    damaged: str | None = None



def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_MAX_VERSION = 2**32 - 1  # the sealed record's associated data holds it in 4 bytes


def is_version(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and 1 <= value <= _MAX_VERSION


def parse_key_row(row: list[object], versions: tuple[VersionRecord, ...],
               problems: list[str], rowid: int) -> KeyRecord:
    """One ``keys`` row as a record; what does not parse is named in ``damaged``."""
    raw_name, raw_type, created, raw_labels, primary, min_dec, row_mac = row
    problems = list(problems)
    if raw_name is None:
        problems.append(f"its name is NULL (served as '{NULL_NAME}{rowid}')")

    def text(value: object, what: str) -> str:
        raw = bytes(value) if isinstance(value, bytes) else b""
        try:
            return raw.decode()
        except UnicodeDecodeError:
            problems.append(f"its {what} is not valid UTF-8")
            return raw.decode(errors="backslashreplace")

    name = text(raw_name, "name") if raw_name is not None else f"{NULL_NAME}{rowid}"
    if len(name) > MAX_NAME_LEN:  # unreachable through the edge under that name
        problems.append(f"its name is {len(name)} characters, over {MAX_NAME_LEN} "
                        f"(served as '{NULL_NAME}{rowid}')")
        name = f"{NULL_NAME}{rowid}"
    type_ = text(raw_type, "type")
    if is_number(created):
        created_at = float(created)
    else:
        problems.append(f"its created time {created!r} is not a number")
        created_at = 0.0
    for what, value in (("primary version", primary),
                        ("minimum decryption version", min_dec)):
        if not is_version(value):
            problems.append(f"its {what} {value!r} is not a version number")
    labels: dict[str, str] = {}
    try:
        parsed = json.loads(raw_labels) if isinstance(raw_labels, bytes) else None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        problems.append("its labels are not valid JSON")
    else:
        if isinstance(parsed, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
            labels = parsed
        else:
            problems.append("its labels are not a JSON object of strings")
    return KeyRecord(
        name=name,
        type=type_,
        created=created_at,
        primary_version=primary if is_version(primary) else 1,
        min_decryption_version=min_dec if is_version(min_dec) else 1,
        labels=labels,
        versions=versions,
        row_mac=bytes(row_mac) if isinstance(row_mac, bytes) else None,
        damaged="; ".join(problems) or None,
    )
