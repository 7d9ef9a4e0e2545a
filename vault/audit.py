"""The audit trail: one JSON line per operation.

Each line carries the time, the identity (as the listener or the client
certificate established it), the listener, the operation, the key name, the
key version and the result (``ok`` or the gRPC status code name).  Never a
message, a plaintext, a ciphertext, a signature, a MAC or any key material:
the record type below has no field that could hold them.

Lines are written with one ``write(2)`` each on an ``O_APPEND`` descriptor,
so lines from concurrent calls never interleave, and a batch's lines go out
in one write.  They are not fsync'ed: the trail survives a crash of the
server, not of the machine.

**Fail closed.**  When a line cannot be written (disk full, I/O error,
revoked file), :meth:`AuditLog.write` raises :class:`AuditUnavailable` and
the edge withholds the operation's result from the client (UNAVAILABLE).
With ``fail_open=True`` the failure is logged and the result is returned.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from clients.errors import AuditUnavailable

log = logging.getLogger("secretvault.audit")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    identity: str
    listener: str
    operation: str
    key: str | None
    version: int | None
    result: str  # "ok" or a gRPC status code name

    def line(self, now: float) -> str:
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                + f".{int(now % 1 * 1e6):06d}Z",
                "identity": self.identity,
                "listener": self.listener,
                "operation": self.operation,
                "key": self.key,
                "version": self.version,
                "result": self.result,
            },
            ensure_ascii=True,
            separators=(",", ":"),
        )


class AuditLog:
    """Appends audit lines to a file (created 0600) or to stderr."""

    def __init__(self, path: str | None = None, *, fail_open: bool = False) -> None:
        self.path = path
        self.fail_open = fail_open
        self._lock = threading.Lock()
        self._owned = False
        if path is None or path == "-":
            self._fd = sys.stderr.fileno()
            self.path = None
        else:
            # O_APPEND: every write lands at the end, atomically per write
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
            self._owned = True

    @property
    def where(self) -> str:
        return self.path or "stderr"

    def write(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        now = time.time()
        data = "".join(r.line(now) + "\n" for r in records).encode("ascii")
        try:
            with self._lock:
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
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
