"""The audit trail: one JSON line per operation.

Each line carries the time, the identity (as the listener or the client
certificate established it), the listener, the operation, the key name, the
key version and the result (``ok`` or the gRPC status code name); a worker of
``serve --workers N`` adds its ``pid`` and ``worker`` index after the listener.  Never a
message, a plaintext, a ciphertext, a signature, a MAC or any key material:
the record type below has no field that could hold them.

Lines are written with one ``write(2)`` each on an ``O_APPEND`` descriptor,
so lines from concurrent calls never interleave, and a batch's lines (still
one per operation) go out in one write.  They are not fsync'ed: the trail
survives a crash of the server, not of the machine.

A batch refused or failed as a whole (denied, too large, cancelled) is one
summary line (:meth:`AuditLog.write_summary`) with the batch's operation
counts, never one line per operation it carried.  An operation that changes
keys (create, import, rotate, set minimum version, delete) is written twice:
an ``attempt`` line before it runs, and its result line after.

**Fail closed.**  When a line cannot be written (disk full, I/O error,
revoked file), the writer raises :class:`AuditUnavailable`.  The edge then
refuses an operation that changes keys before it runs (its ``attempt`` line
could not be written, so nothing changes unaudited), and withholds any
other operation's result from the client (UNAVAILABLE).  With
``fail_open=True`` the failure is logged and the operation proceeds.

**Bounded.**  No line is longer than :data:`MAX_LINE`, whatever a request
holds: the edge refuses a key name over 128 characters (INVALID_ARGUMENT)
before the call's line could name it, and the writer clips every string
field (an identity from a certificate's SAN URI has no such limit); a
clipped line carries ``"truncated":true``.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import NamedTuple

from secretvault.api.errors import AuditUnavailable

log = logging.getLogger("secretvault.audit")

#: one audit entry as the edge hands it over: (operation, key, version, result)
Entry = tuple[str, str | None, int | None, str]

#: strings with few distinct values (identities, listeners, operations,
#: results) are escaped once; key names come from clients and are not kept
_MAX_QUOTED = 1024

#: the most bytes a string field takes once escaped: an identity, a listener or a
#: key (the edge refuses names over 128 characters, which escape to at most 768
#: bytes; a certificate's SAN URI has no such limit), and an operation or result
_MAX_FIELD = 800
_MAX_WORD = 64
#: the most bytes one line can take: every string field is clipped (and the line
#: then carries ``"truncated":true``), every number is an int, and a batch's
#: summary names at most the few operations a batch can carry
MAX_LINE = 4096
#: bytes a pipe writes whole (POSIX: at least 512; Linux: 4096, one page)
PIPE_BUF = select.PIPE_BUF
assert MAX_LINE <= PIPE_BUF
_TRUNCATED = ',"truncated":true'


def _clip(text: str, budget: int) -> tuple[str, bool]:
    """``text`` escaped as JSON, cut to at most ``budget`` bytes: (string, cut?).

    At most ``budget`` characters are ever escaped (each escapes to 1-12
    bytes), so a huge string costs no more than a small one.
    """
    quoted = encode_basestring_ascii(text[:budget])
    if len(quoted) <= budget and len(text) <= budget:
        return quoted, False
    for n in (budget // 6, (budget - 2) // 12):
        quoted = encode_basestring_ascii(text[:n])
        if len(quoted) <= budget:
            return quoted, True
    return '""', True  # unreachable: 12 bytes per character at most


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


class AuditRecord(NamedTuple):
    identity: str
    listener: str
    operation: str
    key: str | None
    version: int | None
    result: str  # "ok" or a gRPC status code name


class AuditLog:
    """Appends audit lines to a file (created 0600) or to stderr.

    A line is exactly what ``json.dumps(record, ensure_ascii=True,
    separators=(",", ":"))`` makes of the record as an object with the keys
    time, identity, listener, operation, key, version, result (in that
    order), but built from pieces: strings go through the same C escaper
    ``json`` uses, the few strings that repeat are escaped once, and the
    time's seconds are formatted once a second.
    """

    def __init__(self, path: str | None = None, *, fail_open: bool = False,
                 worker: int | None = None) -> None:
        self.path = path
        self.fail_open = fail_open
        #: a worker of ``serve --workers`` names itself in every line: after the
        #: listener come ``"pid":P,"worker":I`` (N workers append to one log)
        self._process = "" if worker is None else f',"pid":{os.getpid()},"worker":{int(worker)}'

        self._lock = threading.Lock()
        self._owned = False
        self._quoted: dict[str, tuple[str, bool]] = {}
        self._callers: dict[tuple[str, str], tuple[str, bool]] = {}
        # (whole second, '{"time":"YYYY-MM-DDTHH:MM:SS.'): replaced whole, never mutated
        self._second: tuple[int, str] = (-1, "")
        if path is None or path == "-":
            self._fd = sys.stderr.fileno()
            self.path = None
        else:
            # O_APPEND: every write lands at the end, atomically per write
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
            self._owned = True
        #: N workers writing one pipe (their shared stderr, a journal): a write of
        #: more than PIPE_BUF bytes may interleave with another's mid-line, so a
        #: worker writes a batch's lines in pieces of whole lines, each at most
        #: PIPE_BUF (no line is longer: MAX_LINE).  A regular file's O_APPEND
        #: write is whole either way.
        self._pieces = worker is not None and not _is_regular(self._fd)

    @property
    def where(self) -> str:
        return self.path or "stderr"

    # --- building lines ---------------------------------------------------------------

    def _quote(self, text: str) -> str:
        """An operation or result name, escaped (and clipped: they are short)."""
        return self._word(text)[0]

    def _word(self, text: str) -> tuple[str, bool]:
        q = self._quoted.get(text)
        if q is None:
            if len(self._quoted) >= _MAX_QUOTED:
                self._quoted.clear()
            q = self._quoted[text] = _clip(text, _MAX_WORD)
        return q

    def _who(self, identity: str, listener: str) -> tuple[str, bool]:
        """(``,"identity":...,"listener":...,"operation":``, clipped?), kept per caller."""
        who = self._callers.get((identity, listener))
        if who is None:
            if len(self._callers) >= _MAX_QUOTED:
                self._callers.clear()
            ident, cut = _clip(identity, _MAX_FIELD)
            where, cut_too = _clip(listener, _MAX_FIELD)
            who = self._callers[(identity, listener)] = (
                f',"identity":{ident},"listener":{where}{self._process},"operation":',
                cut or cut_too)
        return who

    def _stamp(self, now: float) -> str:
        """``{"time":"...Z"`` for ``now`` (UTC, microseconds)."""
        second = int(now)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime('{"time":"%Y-%m-%dT%H:%M:%S.', time.gmtime(second)))
            self._second = cached
        return f'{cached[1]}{int(now % 1 * 1e6):06d}Z"'

    def _key(self, key: str | None) -> tuple[str, bool]:
        return ("null", False) if key is None else _clip(key, _MAX_FIELD)

    def _tail(self, operation: str, key: str | None, version: int | None,
              result: str, cut: bool) -> str:
        """From the operation to the end of the line (marked when a field was clipped)."""
        quoted, cut_key = self._key(key)
        # an operation or result is the edge's own word: clipped only as a last resort
        (op, cut_op), (res, cut_res) = self._word(operation), self._word(result)
        cut = cut or cut_key or cut_op or cut_res
        return (f'{op},"key":{quoted},'
                f'"version":{"null" if version is None else int(version)},'
                f'"result":{res}{_TRUNCATED if cut else ""}}}\n')

    # --- writing ----------------------------------------------------------------------

    def write(self, records: Sequence[AuditRecord]) -> None:
        """One line per record, all in one ``write(2)``."""
        if not records:
            return
        stamp = self._stamp(time.time())
        parts = []
        for r in records:
            who, cut = self._who(r.identity, r.listener)
            parts.append(stamp + who + self._tail(r.operation, r.key, r.version, r.result, cut))
        self._append("".join(parts))

    def write_one(self, identity: str, listener: str, operation: str, key: str | None,
                  version: int | None, result: str) -> None:
        """The line of one unary call."""
        who, cut = self._who(identity, listener)
        self._append(self._stamp(time.time()) + who
                     + self._tail(operation, key, version, result, cut))

    def write_entries(self, identity: str, listener: str, entries: Iterable[Entry]) -> None:
        """The lines of a batch (one caller, one time): all in one ``write(2)``."""
        who, cut = self._who(identity, listener)
        head = self._stamp(time.time()) + who
        # a batch mostly repeats a few entries (a run of signs with one key and
        # version): each distinct one is formatted once, its line then reused
        made: dict[Entry, str] = {}
        lines: list[str] = []
        append = lines.append
        for entry in entries:
            line = made.get(entry)
            if line is None:
                op, key, version, result = entry
                quoted, cut_key = self._key(key)
                line = made[entry] = (
                    f'{head}{self._quote(op)},"key":{quoted},"version":'
                    f'{"null" if version is None else int(version)},'
                    f'"result":{self._quote(result)}{_TRUNCATED if cut or cut_key else ""}}}\n')
            append(line)
        if lines:
            self._append("".join(lines))

    def write_summary(self, identity: str, listener: str, operation: str, key: str | None,
                      result: str, operations: int,
                      by_operation: Mapping[str, int] | None = None) -> None:
        """One line for a whole batch that did not run (refused, too large, failed).

        The usual fields (``operation``/``key``: the first denied operation
        and its key for a refusal, else ``batch`` and null), then
        ``"batch":{"operations":N,"by_operation":{"sign":n,...}}``: the size
        of the batch, never one line per operation it carried.
        ``by_operation`` names operations, never keys.
        """
        who, cut = self._who(identity, listener)
        line = self._stamp(time.time()) + who + self._tail(operation, key, None, result, cut)
        extra = f',"batch":{{"operations":{int(operations)}'
        if by_operation is not None:
            extra += ',"by_operation":{' + ",".join(
                f"{self._quote(op)}:{int(n)}" for op, n in sorted(by_operation.items())) + "}"
        # the line ends '}\n': the batch object goes in before the closing brace
        self._append(f"{line[:-2]}{extra}}}}}\n")

    def write_detail(self, identity: str, listener: str, operation: str, key: str | None,
                     result: str, detail: Mapping[str, str]) -> None:
        """One line with the usual fields, then ``"detail":{...}``: a few short
        strings the operation is known by (the SSH agent's ``session-bind``:
        the host key's fingerprint and the session id), each clipped."""
        who, cut = self._who(identity, listener)
        line = self._stamp(time.time()) + who + self._tail(operation, key, None, result, cut)
        fields = []
        for name, value in sorted(detail.items())[:8]:
            quoted, _ = _clip(value, 160)
            fields.append(f"{self._quote(name)}:{quoted}")
        self._append(f"{line[:-2]},\"detail\":{{{','.join(fields)}}}}}\n")

    def _append(self, text: str) -> None:
        data = text.encode("ascii")
        if self._pieces and len(data) > PIPE_BUF:
            at = 0
            while at < len(data):
                end = data.rfind(b"\n", at, at + PIPE_BUF) + 1 if len(data) - at > PIPE_BUF \
                    else len(data)
                self._append_bytes(data[at:end])
                at = end
            return
        self._append_bytes(data)

    def _append_bytes(self, data: bytes) -> None:
        try:
            with self._lock:
                n = os.write(self._fd, data)
                if n < len(data):
                    # a short write (a signal, a full pipe): the rest follows,
                    # still under the lock so no other line gets in between
                    view = memoryview(data)[n:]
                    while view:
                        view = view[os.write(self._fd, view):]
        except OSError as e:
            message = f"the audit log ({self.where}) cannot be written: {e.strerror}"
            if self.fail_open:
                log.error("%s; continuing (audit fail_open is set)", message)
                return
            log.error("%s; refusing operations (fail closed)", message)
            raise AuditUnavailable(
                f"{message}; the server refuses operations it cannot audit") from None

    def close(self) -> None:
        with self._lock:
            if self._owned and self._fd >= 0:
                os.close(self._fd)
            self._fd = -1
