"""What the edges of all the listeners share: one policy, audit log, set of limits.

The server builds one :class:`Edge`; each listener's interceptor reads it.
Draining is a flag here, so every listener refuses new calls at once.
"""

from __future__ import annotations

import threading

from secretvault.vault.audit import AuditLog
from secretvault.vault.config import ServerConfig
from secretvault.vault.edge.limits import LongCalls
from secretvault.vault.metrics import Metrics
from secretvault.vault.policy import Policy
from secretvault.vault.stats import OperationCounters


class Edge:
    """State the listeners share: policy, audit, counters, metrics, limits, draining.

    The limits default to the server configuration's (``ServerConfig``).
    """

    def __init__(
        self,
        policy: Policy,
        audit: AuditLog,
        counters: OperationCounters,
        metrics: Metrics | None,
        *,
        max_batch: int = ServerConfig.max_batch_operations,
        workers: int = ServerConfig.workers,
        max_streams_per_identity: int = ServerConfig.max_streams_per_identity,
        stream_idle_seconds: float = ServerConfig.stream_idle_seconds,
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.counters = counters
        self.metrics = metrics
        self.max_batch = max_batch
        self.long_calls = LongCalls(max_streams_per_identity, stream_idle_seconds)
        #: long-lived calls one listener serves at once: half its handler threads
        self.long_calls_per_listener = max(1, workers // 2)
        self.draining = threading.Event()
