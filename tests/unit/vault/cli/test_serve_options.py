"""``secretvault serve``'s options are built from ServerConfig's fields.

Each default is stated once, in the config: the options take it (and show it
in their help), pass through under the field's name, and leave the ranges to
:meth:`ServerConfig.validate`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from secretvault.api.errors import InvalidArgument
from secretvault.vault.app import VaultConfig
from secretvault.vault.cli.parser import build_parser
from secretvault.vault.cli.serve import server_config
from secretvault.vault.config import ServerConfig
from secretvault.vault.sealing import Argon2Params
from secretvault.vault.sizes import format_exact_bytes

REPO = Path(__file__).resolve().parents[4]
SERVER_FIELDS = {f.name: f for f in fields(ServerConfig)}
#: serve's options that make the VaultConfig, not a ServerConfig field
VAULT_OPTIONS = {"socket", "data_dir", "store", "backend", "passphrase_file", "unseal_key_file",
                 "argon2_ops", "argon2_mem", "model_memory", "model_cma", "model_fallback"}


def _serve() -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            parser: argparse.ArgumentParser = action.choices["serve"]
            return parser
    raise AssertionError("no serve subcommand")


def _options() -> dict[str, argparse.Action]:
    return {a.dest: a for a in _serve()._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)}


def test_every_serve_option_is_a_config_field_or_a_vault_option() -> None:
    options = set(_options())
    assert options - set(SERVER_FIELDS) == VAULT_OPTIONS
    # and the server fields it sets (the rest have no option yet)
    assert options & set(SERVER_FIELDS) == {
        "policy_file", "tcp", "tls_cert", "tls_key", "client_ca", "unix_socket", "audit_log",
        "audit_fail_open", "metrics", "grace_seconds", "max_message_bytes",
        "max_concurrent_rpcs", "max_streams_per_identity", "stream_idle_seconds",
        "keep_capabilities", "stop_on_tracer", "tracer_check_seconds",
        "max_versions_per_key",
        "max_connections", "connection_idle_seconds", "reserved_descriptors",
        "ssh_agent", "ssh_agent_max_connections", "ssh_agent_idle_seconds",
        "ssh_agent_max_keys",
        "worker_processes",
    }


@pytest.mark.parametrize("name", sorted(set(_options()) & set(SERVER_FIELDS)))
def test_a_serve_option_defaults_to_its_config_field(name: str) -> None:
    default = SERVER_FIELDS[name].default
    assert default is not MISSING
    assert _options()[name].default == default


@pytest.mark.parametrize("flag,shown", [
    ("--grace", f"(default: {ServerConfig.grace_seconds:g})"),
    ("--max-message-bytes", f"(default: {format_exact_bytes(ServerConfig.max_message_bytes)})"),
    ("--max-concurrent-rpcs", f"(default: {ServerConfig.max_concurrent_rpcs})"),
    ("--max-streams-per-identity", f"(default: {ServerConfig.max_streams_per_identity})"),
    ("--stream-idle-seconds", f"(default: {ServerConfig.stream_idle_seconds:g})"),
    ("--max-connections", f"(default: {ServerConfig.max_connections})"),
    ("--connection-idle-seconds", f"(default: {ServerConfig.connection_idle_seconds:g})"),
    ("--reserved-descriptors", f"(default: {ServerConfig.reserved_descriptors})"),
    ("--ssh-agent-max-connections", f"(default: {ServerConfig.ssh_agent_max_connections})"),
    ("--ssh-agent-idle-seconds", f"(default: {ServerConfig.ssh_agent_idle_seconds:g})"),
    ("--ssh-agent-max-keys", f"(default: {ServerConfig.ssh_agent_max_keys})"),
    ("--backend", f"{VaultConfig.backend} (real secret memory, the default)"),
    ("--argon2-ops", f"(default: {Argon2Params().ops})"),
    ("--argon2-mem", f"(default: {format_exact_bytes(Argon2Params().mem)})"),
    ("--model-memory", f"(default: {format_exact_bytes(VaultConfig.model_memory_bytes)})"),
    ("--model-cma", f"(default: {format_exact_bytes(VaultConfig.model_cma_bytes)})"),
])
def test_the_help_shows_the_config_default(flag: str, shown: str) -> None:
    action = next(a for a in _options().values() if flag in a.option_strings)
    assert action.help is not None and shown in action.help, (flag, action.help)


def test_no_options_give_the_default_config() -> None:
    assert server_config(build_parser().parse_args(["serve"])) == ServerConfig()


def test_options_pass_through_by_field_name() -> None:
    config = server_config(build_parser().parse_args([
        "serve", "--no-unix-socket", "--tcp", "127.0.0.1:0", "--policy", "p.toml",
        "--audit-fail-open", "--grace", "2.5",
    ]))
    assert (config.unix_socket, config.tcp, config.policy_file, config.audit_fail_open,
            config.grace_seconds) == (False, "127.0.0.1:0", "p.toml", True, 2.5)


@pytest.mark.parametrize("args,message", [
    (["--max-concurrent-rpcs", "0"], "max_concurrent_rpcs"),
    (["--grace", "-1"], "grace_seconds"),
    (["--max-message-bytes", "1000"], "max_message_bytes"),
    (["--stream-idle-seconds", "0"], "stream_idle_seconds"),
    (["--max-connections", "0"], "max_connections"),
    (["--connection-idle-seconds", "0"], "connection_idle_seconds"),
    (["--reserved-descriptors", "8"], "reserved_descriptors"),
    (["--ssh-agent-max-connections", "0"], "ssh_agent_max_connections"),
    (["--ssh-agent-idle-seconds", "0"], "ssh_agent_idle_seconds"),
    (["--ssh-agent-max-keys", "0"], "ssh_agent_max_keys"),
])
def test_limits_are_checked_by_the_config_not_the_parser(args: list[str],
                                                         message: str) -> None:
    config = server_config(build_parser().parse_args(["serve", *args]))  # parses
    with pytest.raises(InvalidArgument, match=message):
        config.validate()


def test_ssh_agent_alone_is_beside_the_socket_and_a_path_is_made_absolute(
        tmp_path: Path) -> None:
    alone = server_config(build_parser().parse_args(
        ["serve", "--socket", str(tmp_path / "run" / "v.sock"), "--ssh-agent"]))
    assert alone.ssh_agent == str(tmp_path / "run" / "ssh-agent.sock")
    os.chdir(tmp_path)
    given = server_config(build_parser().parse_args(["serve", "--ssh-agent", "a.sock"]))
    assert given.ssh_agent == str(tmp_path / "a.sock")
    assert server_config(build_parser().parse_args(["serve"])).ssh_agent is None


def test_loading_the_command_does_not_load_grpc() -> None:
    """main sets GRPC_VERBOSITY before grpc is imported (grpc reads it once, on import)."""
    code = ("import sys\nfrom secretvault.vault.cli.parser import build_parser\n"
            "import secretvault.vault.cli\nbuild_parser()\n"
            "assert 'grpc' not in sys.modules, 'grpc loaded with the parser'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert p.returncode == 0, p.stderr.decode()


def test_python_m_secretvault_is_the_command() -> None:
    p = subprocess.run([sys.executable, "-m", "secretvault", "--version"],
                       capture_output=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert p.returncode == 0 and p.stdout.startswith(b"secretvault "), p.stderr
