"""Every agent socket of a server, and the paths they may not share."""

from __future__ import annotations

from pathlib import Path

import pytest

from secretvault.api.errors import InvalidArgument
from secretvault.backends import SlotAllocator
from secretvault.vault.agent.serving import AgentServer, agent_bindings
from secretvault.vault.audit import AuditLog
from secretvault.vault.config import ServerConfig
from secretvault.vault.keyring import Keyring
from secretvault.vault.policy import Policy
from secretvault.vault.stats import OperationCounters
from tests.unit.vault.agent._support import policy

POLICY = """
[identities.dev]
[[identities.dev.agent_sockets]]
path = "/run/x/dev-agent.sock"
"""


def test_the_owners_socket_and_the_policys(tmp_path: Path) -> None:
    p = policy(POLICY, tmp_path)
    assert [(b.path, b.identity, b.mode) for b in agent_bindings(ServerConfig(), p)] == [
        ("/run/x/dev-agent.sock", "dev", 0o600)]
    both = agent_bindings(ServerConfig(ssh_agent="/run/x/agent.sock"), p)
    assert [b.identity for b in both] == ["owner", "dev"]
    assert agent_bindings(ServerConfig(), Policy()) == []


def test_a_path_shared_with_another_listener_is_refused(
        ring: Keyring, allocator: SlotAllocator, tmp_path: Path) -> None:
    server = AgentServer(ServerConfig(ssh_agent=str(tmp_path / "a.sock")), Policy(), ring,
                         allocator, AuditLog(str(tmp_path / "audit.log")),
                         OperationCounters())
    with pytest.raises(InvalidArgument, match="share one socket path"):
        server.bind([str(tmp_path / "a.sock")])
    server.stop()
