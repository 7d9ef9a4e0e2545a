"""Every agent socket of one vault server, and the one service behind them.

The owner's socket (``serve --ssh-agent [PATH]``) and each identity's
``[[identities.NAME.agent_sockets]]``; each identity's connections are
capped over all of its agent sockets.  Stopping ends every connection, then
zeroes every key held in the agent (the vault's own keys are the keyring's).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from secretvault.api.errors import InvalidArgument
from secretvault.backends import SlotAllocator
from secretvault.vault.agent.listener import AgentListener
from secretvault.vault.agent.service import AgentService
from secretvault.vault.audit import AuditLog
from secretvault.vault.config import ServerConfig
from secretvault.vault.keyring import Keyring
from secretvault.vault.policy import OWNER, Policy, SocketBinding
from secretvault.vault.stats import OperationCounters


def agent_bindings(config: ServerConfig, policy: Policy) -> list[SocketBinding]:
    """The owner's agent socket (if asked for) and the policy's."""
    out = []
    if config.ssh_agent is not None:
        out.append(SocketBinding(config.ssh_agent, OWNER, 0o600, None))
    out.extend(policy.agent_sockets)
    return out


class AgentServer:
    def __init__(self, config: ServerConfig, policy: Policy, keyring: Keyring,
                 allocator: SlotAllocator, audit: AuditLog, counters: OperationCounters,
                 observe: Callable[[str, float], None] | None = None) -> None:
        self.service = AgentService(keyring, allocator, policy, audit, counters,
                                    persist=policy.ssh_agent_persist,
                                    max_keys=config.ssh_agent_max_keys, observe=observe)
        caps: dict[str, threading.BoundedSemaphore] = {}
        self.listeners = [
            AgentListener(b, self.service, idle_seconds=config.ssh_agent_idle_seconds,
                          connections=caps.setdefault(b.identity, threading.BoundedSemaphore(
                              config.ssh_agent_max_connections)))
            for b in agent_bindings(config, policy)]

    def bind(self, taken: list[str]) -> None:
        """Bind every agent socket; refused when one has the path of another listener."""
        paths = [os.path.abspath(p) for p in taken]
        for item in self.listeners:
            path = os.path.abspath(item.path)
            if path in paths:
                raise InvalidArgument(f"two listeners share one socket path: {item.path}")
            paths.append(path)
        for item in self.listeners:
            item.bind()

    def start(self) -> None:
        for item in self.listeners:
            item.start()

    def stop(self) -> None:
        try:
            for item in self.listeners:
                item.stop()
        finally:
            self.service.close()
