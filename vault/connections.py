"""Connections: each listener's cap, and the descriptor budget all of them fit in.

Every listener shares the process's one descriptor table (RLIMIT_NOFILE).
Without a cap, a caller allowed on any socket could hold idle connections
until ``accept(2)`` failed with EMFILE on every listener, the owner's
included.  So each listener (each its own ``grpc.Server``, and on a Unix
socket each one identity) may hold at most :attr:`ConnectionBudget.per_listener`
connections, enforced by grpc core (``grpc.max_allowed_incoming_connections``:
a connection beyond the cap is closed as soon as it is accepted), and the
caps of all listeners plus a reserve for the server's own files fit under
the soft RLIMIT_NOFILE, which is first raised to the hard limit.  A caller
can then fill its own listener and nothing more.  Connections with no call
for ``connection_idle_seconds`` are closed too (``grpc.max_connection_idle_ms``:
a GOAWAY; a client reconnects on its next call).
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

from secretvault.api.errors import FailedPrecondition
from secretvault.vault.config import ServerConfig

log = logging.getLogger("secretvault.server")

#: a listener that cannot hold this many connections is refused at start
MIN_PER_LISTENER = 4


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    """How the descriptor limit is shared out, as computed at start."""

    #: the soft RLIMIT_NOFILE the server runs with (after raising it)
    nofile: int
    #: what it was before the server raised it
    nofile_before: int
    #: descriptors already open before the listeners were bound
    in_use: int
    #: kept free for the server's own files (store, audit log, grpc itself)
    reserved: int
    listeners: int
    #: connections each listener may hold at once
    per_listener: int
    #: what ``max_connections`` asked for (per_listener is lower when it did not fit)
    asked: int

    @property
    def total(self) -> int:
        return self.per_listener * self.listeners

    def describe(self) -> str:
        """One line for the start-up summary."""
        raised = (f", raised from {self.nofile_before:,}"
                  if self.nofile > self.nofile_before else "")
        lowered = (f" (lowered from {self.asked:,} to fit)"
                   if self.per_listener < self.asked else "")
        return (f"at most {self.per_listener:,} per listener{lowered}; {self.total:,} for "
                f"{self.listeners} listener{'s' if self.listeners != 1 else ''} + "
                f"{self.in_use + self.reserved:,} kept for the server, of RLIMIT_NOFILE "
                f"{self.nofile:,}{raised}")


def open_descriptors() -> int:
    """How many descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: count the ones that answer
        return sum(1 for fd in range(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
                   if _is_open(fd))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; (before, after).

    The soft limit is often 1024 (for programs that still use ``select``)
    under a much higher hard limit: a server that needs more may take it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:  # the kernel's ceiling for any process
            with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, target, e)
            return soft, soft
        return soft, target
    return soft, soft


def plan(config: ServerConfig, listeners: int) -> ConnectionBudget:
    """Each listener's cap: ``max_connections``, lowered so that all of them fit.

    Refused (one line naming the fix) when the limit leaves fewer than
    :data:`MIN_PER_LISTENER` connections to a listener.
    """
    before, nofile = raise_nofile()
    in_use = open_descriptors()
    reserved = config.reserved_descriptors
    free = nofile - in_use - reserved
    per = min(config.max_connections, free // max(1, listeners))
    if per < MIN_PER_LISTENER:
        raise FailedPrecondition(
            f"RLIMIT_NOFILE {nofile} leaves {max(0, free)} descriptors for {listeners} "
            f"listeners after {in_use} in use and {reserved} reserved: fewer than "
            f"{MIN_PER_LISTENER} connections each. Fix: raise the limit (ulimit -n; systemd "
            "LimitNOFILE=; podman/docker --ulimit nofile=N:N), serve fewer sockets, or lower "
            "--reserved-descriptors")
    budget = ConnectionBudget(nofile=nofile, nofile_before=before, in_use=in_use,
                              reserved=reserved, listeners=listeners, per_listener=per,
                              asked=config.max_connections)
    if per < config.max_connections:
        log.warning("RLIMIT_NOFILE %d: each listener may hold %d connections, not the %d "
                    "asked for (raise the limit to allow more)", nofile, per,
                    config.max_connections)
    return budget


def grpc_options(config: ServerConfig, budget: ConnectionBudget) -> list[tuple[str, int]]:
    """The grpc core arguments that hold one listener to its share."""
    return [
        ("grpc.max_allowed_incoming_connections", budget.per_listener),
        ("grpc.max_connection_idle_ms", int(config.connection_idle_seconds * 1000)),
    ]
