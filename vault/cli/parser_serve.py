"""``serve``'s options, built only when ``serve`` is the command.

The options that set a :class:`~secretvault.vault.config.ServerConfig` field
are named by that field and take its default (and show it in their help): the
config's fields are the one statement of those defaults.  Reading them loads
the server, which no client command does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

from secretvault.api.paths import (
    AGENT_SOCKET_NAME,
    SOCKET_ENV,
    default_agent_socket_path,
    default_socket_path,
)
from secretvault.vault.cli.options import number, positive_int, whole_number
from secretvault.vault.sizes import format_exact_bytes


def _default(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``."""
    field = next(f for f in fields(config) if f.name == name)
    assert field.default is not MISSING, f"{config.__name__}.{name} has no plain default"
    return field.default


def _server_option(group: Any, flag: str, name: str, help: str, *,
                   shown: Callable[[Any], str] | None = None, **kwargs: Any) -> None:
    """An option that sets ``ServerConfig.<name>``: its dest is the field's name, its
    default the field's (``shown`` writes it into the help)."""
    from secretvault.vault.config import ServerConfig

    default = _default(ServerConfig, name)
    if shown is not None:
        help = f"{help} (default: {shown(default)})"
    group.add_argument(flag, dest=name, default=default, help=help, **kwargs)


def add_serve(parser: argparse.ArgumentParser) -> None:
    """``serve``'s options: their defaults are the server's own (it loads here)."""
    from secretvault.vault.app import BACKENDS, PASSPHRASE_ENV, VaultConfig, default_data_dir
    from secretvault.vault.cli import serve
    from secretvault.vault.sealing import Argon2Params

    parser.description = (
        "Run the vault: unseal the key store into secret memory and serve the "
        "gRPC API on a Unix socket (and, optionally, on TCP with TLS). It prints one summary "
        "at start-up (backend and protection, memlock limit and headroom in keys, where the "
        "store and socket are) and drains in-flight calls on SIGTERM or Ctrl-C.")
    parser.epilog = f"""\
where the unseal material comes from (first match wins):
  --unseal-key-file FILE    a 32-byte key file
  --passphrase-file FILE    a passphrase in a file
  ${PASSPHRASE_ENV}   a passphrase in the environment
With none given on the first start, the vault creates an unseal key file
(mode 0600) in the data directory and says where: fine for trying it out;
in production keep the unseal material on another machine or medium.
"""
    parser.set_defaults(func=serve.cmd_serve)
    parser.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"Unix socket to listen on (default: ${SOCKET_ENV}, else "
                        f"{default_socket_path()})")
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"where the sealed key store lives (default: {default_data_dir()})")
    parser.add_argument("--store", metavar="URL", default=_default(VaultConfig, "store"),
                        help="keep the sealed keys in PostgreSQL: a libpq URL "
                        "(postgresql://USER@HOST:PORT/DATABASE) or conninfo string, shared by "
                        "every replica; the password only in the URL or libpq's PGPASSWORD "
                        "or PGPASSFILE (default: the data directory's SQLite file)")
    backend = _default(VaultConfig, "backend")
    parser.add_argument("--backend", choices=BACKENDS, default=backend,
                        help=f"where keys live: {backend} (real secret memory, the default), "
                        "or a model for development: page-model, pooled-pmd-model "
                        "(keys NOT in secret memory)")
    _server_option(parser, "--policy", "policy_file", metavar="FILE",
                   help="access-control policy (identities -> operations on key-name "
                   "patterns; default deny)")
    unseal = parser.add_argument_group("unseal material")
    unseal_x = unseal.add_mutually_exclusive_group()
    unseal_x.add_argument("--passphrase-file", metavar="FILE",
                          help=f"read the store's passphrase from FILE (instead of "
                          f"${PASSPHRASE_ENV})")
    unseal_x.add_argument("--unseal-key-file", metavar="FILE",
                          help="a 32-byte unseal key file (read straight into secret memory)")
    tcp = parser.add_argument_group("TCP with TLS")
    _server_option(tcp, "--tcp", "tcp", metavar="HOST:PORT",
                   help="also listen on HOST:PORT with TLS (needs --tls-cert and --tls-key)")
    _server_option(tcp, "--tls-cert", "tls_cert", metavar="FILE",
                   help="PEM server certificate chain")
    _server_option(tcp, "--tls-key", "tls_key", metavar="FILE", help="PEM server private key")
    _server_option(tcp, "--client-ca", "client_ca", metavar="FILE",
                   help="require client certificates signed by this CA (mutual TLS)")
    _server_option(tcp, "--no-unix-socket", "unix_socket", action="store_false",
                   help="serve TCP only, not the default Unix socket")
    ops = parser.add_argument_group("operations")
    _server_option(ops, "--audit-log", "audit_log", metavar="FILE",
                   help="append one JSON line per operation to FILE (default: stderr)")
    _server_option(ops, "--audit-fail-open", "audit_fail_open", action="store_true",
                   help="keep serving when the audit log cannot be written "
                   "(default: refuse calls)")
    _server_option(ops, "--metrics", "metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics "
                   "(e.g. 127.0.0.1:9464)")
    _server_option(ops, "--workers", "worker_processes", type=whole_number, metavar="N",
                   help="serve from N processes, each with its own copy of the keys in its "
                   "own secret memory (N times the memlock), every listener reaching all of "
                   "them; 0: this process serves", shown=str)
    _server_option(ops, "--keep-capabilities", "keep_capabilities", action="store_true",
                   help="keep the capabilities the server was started with (default: "
                   "drop them all at start, CAP_IPC_LOCK first, so RLIMIT_MEMLOCK holds)")
    _server_option(ops, "--stop-on-tracer", "stop_on_tracer", action="store_true",
                   help="when a debugger or other tracer attaches, zero secret memory and "
                   "exit 3 (default: report it in stats and keep serving)")
    _server_option(ops, "--tracer-check-seconds", "tracer_check_seconds", type=number,
                   metavar="SECONDS", shown=str,
                   help="how often --stop-on-tracer looks for a tracer")
    # the server's limits: their ranges are checked by ServerConfig.validate
    _server_option(ops, "--grace", "grace_seconds", type=number, metavar="SECONDS",
                   help="how long in-flight calls may finish on SIGTERM", shown="{:g}".format)
    _server_option(ops, "--max-message-bytes", "max_message_bytes", type=whole_number,
                   metavar="N", help="largest request accepted, in bytes",
                   shown=format_exact_bytes)
    _server_option(ops, "--max-concurrent-rpcs", "max_concurrent_rpcs", type=whole_number,
                   metavar="N", help="calls in progress per listener before RESOURCE_EXHAUSTED",
                   shown=str)
    _server_option(ops, "--max-streams-per-identity", "max_streams_per_identity",
                   type=whole_number, metavar="N",
                   help="open Stream and WatchStats calls per identity", shown=str)
    _server_option(ops, "--stream-idle-seconds", "stream_idle_seconds", type=number,
                   metavar="SECONDS",
                   help="cancel a Stream that sends no request for this long",
                   shown="{:g}".format)
    _server_option(ops, "--max-versions-per-key", "max_versions_per_key", type=whole_number,
                   metavar="N", help="versions a key may have before a rotation is refused",
                   shown=str)
    _server_option(ops, "--max-connections", "max_connections", type=whole_number,
                   metavar="N", help="connections each listener holds at once (lowered at "
                   "start to fit RLIMIT_NOFILE)", shown=str)
    _server_option(ops, "--connection-idle-seconds", "connection_idle_seconds", type=number,
                   metavar="SECONDS", help="close a connection with no call for this long",
                   shown="{:g}".format)
    _server_option(ops, "--reserved-descriptors", "reserved_descriptors", type=whole_number,
                   metavar="N", help="descriptors kept out of the listeners' share",
                   shown=str)
    agent = parser.add_argument_group("SSH agent")
    # alone, "": ssh-agent.sock beside --socket (serve.server_config says where)
    _server_option(agent, "--ssh-agent", "ssh_agent", metavar="PATH", nargs="?",
                   const="",
                   help="also speak the SSH agent protocol to the owner on PATH (alone: "
                   f"{AGENT_SOCKET_NAME} beside --socket, {default_agent_socket_path()} by "
                   "default); `secretvault ssh-agent` prints the SSH_AUTH_SOCK line")
    _server_option(agent, "--ssh-agent-max-connections", "ssh_agent_max_connections",
                   type=whole_number, metavar="N", shown=str,
                   help="agent connections (each a thread) one identity holds at once")
    _server_option(agent, "--ssh-agent-idle-seconds", "ssh_agent_idle_seconds", type=number,
                   metavar="SECONDS", shown="{:g}".format,
                   help="close an agent connection that sends nothing for this long")
    _server_option(agent, "--ssh-agent-max-keys", "ssh_agent_max_keys", type=whole_number,
                   metavar="N", shown=str, help="keys one identity may add with ssh-add")
    kdf = Argon2Params()
    new_store = parser.add_argument_group("a new store's passphrase KDF (Argon2id)")
    new_store.add_argument("--argon2-ops", type=positive_int, metavar="N",
                           help=f"opslimit (default: {kdf.ops})")
    new_store.add_argument("--argon2-mem", type=positive_int, metavar="BYTES",
                           help=f"memlimit in bytes (default: {format_exact_bytes(kdf.mem)})")
    model = parser.add_argument_group("model backends (page-model, pooled-pmd-model)")
    memory = format_exact_bytes(_default(VaultConfig, "model_memory_bytes"))
    model.add_argument("--model-memory", type=positive_int, metavar="BYTES",
                       help=f"simulated RAM (default: {memory})")
    cma = format_exact_bytes(_default(VaultConfig, "model_cma_bytes"))
    model.add_argument("--model-cma", type=positive_int, metavar="BYTES",
                       help=f"the pooled-PMD model's CMA pool (default: {cma})")
    model.add_argument("--model-fallback", action="store_true",
                       help="pooled-PMD: fall back to order-0 pages when the pool is empty")
