"""The agent's audit lines and counts: one place, shared by every request kind.

Each sign and each change gets one line (identity, listener, operation, key,
version, result) and one count (``stats``, and the metrics' operations
counter).  A change writes an ``attempt`` line first, as gRPC changes do:
when that line cannot be written the change is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from secretvault.api.errors import AuditUnavailable
from secretvault.vault.agent.session import Session
from secretvault.vault.audit import AuditLog
from secretvault.vault.stats import OperationCounters

log = logging.getLogger("secretvault.agent")


class Recorder:
    def __init__(self, audit: AuditLog, counters: OperationCounters) -> None:
        self.audit = audit
        self.counters = counters

    def count(self, operation: str, result: str) -> None:
        self.counters.record(operation, result)

    def done(self, session: Session, operation: str, key: str | None, version: int | None,
             result: str) -> None:
        """Count it and write its line (:class:`AuditUnavailable` when that fails)."""
        self.counters.record(operation, result)
        self.audit.write_one(session.caller.identity, session.caller.listener, operation, key,
                             version, result)

    def attempt(self, session: Session, operation: str, key: str | None) -> bool:
        """The ``attempt`` line of a change; False (the change must not happen) when
        it cannot be written."""
        try:
            self.audit.write_one(session.caller.identity, session.caller.listener, operation,
                                 key, None, "attempt")
        except AuditUnavailable:
            self.counters.record(operation, "UNAVAILABLE")
            return False
        return True

    def result(self, session: Session, operation: str, key: str | None, result: str,
               version: int | None = None) -> None:
        """The result line of a change already made or refused (a failed write is logged)."""
        try:
            self.done(session, operation, key, version, result)
        except AuditUnavailable:
            log.error("the result of %s on %s could not be audited", operation, key)

    def detail(self, session: Session, operation: str, result: str,
               detail: Mapping[str, str]) -> bool:
        """Count it and write its line with ``detail``; False when the line failed."""
        self.counters.record(operation, result)
        try:
            self.audit.write_detail(session.caller.identity, session.caller.listener,
                                    operation, None, result, detail)
        except AuditUnavailable:
            return False
        return True

    def system(self, identity: str, listener: str, operation: str, key: str | None) -> None:
        """A change the agent made by itself (a lifetime ran out)."""
        self.counters.record(operation, "ok")
        try:
            self.audit.write_one(identity, listener, operation, key, None, "ok")
        except AuditUnavailable:
            log.error("%s of %s could not be audited", operation, key)
