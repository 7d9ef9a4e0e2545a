"""``secretvault serve``: run the vault until SIGTERM or SIGINT.

:func:`server_config` turns the options into a
:class:`~secretvault.vault.config.ServerConfig` (each option that sets a
config field is named by it: the parser takes its default from that field).
:func:`run` opens the vault, prints the start-up summary, serves, then on a
signal drains in-flight calls, zeroes and unmaps every secret page, and
returns 0.  :func:`cmd_serve` is the subcommand: it turns a file the server
cannot open into one line naming the fix, and holds a stopped server for a
test when :data:`HOLD_AFTER_STOP_ENV` asks it to.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import fields, replace
from types import FrameType
from typing import Any

from secretvault.api.paths import AGENT_SOCKET_NAME
from secretvault.vault.app import VaultConfig
from secretvault.vault.cli.errors import CliError
from secretvault.vault.config import ServerConfig
from secretvault.vault.sealing import Argon2Params

#: development and tests only: after a stop, hold the process (its memory
#: unmapped, its files closed) until a line arrives on stdin, so a test can
#: read /proc/PID/maps and /proc/PID/status of the stopped server from outside
HOLD_AFTER_STOP_ENV = "SECRETVAULT_DEV_HOLD_AFTER_STOP"


def _vault_config(args: argparse.Namespace) -> VaultConfig:
    """The vault's part of the options: paths made absolute, the rest as given."""
    changes: dict[str, Any] = {"backend": args.backend}
    if args.socket:
        changes["socket"] = os.path.abspath(args.socket)
    if args.data_dir:
        changes["data_dir"] = os.path.abspath(args.data_dir)
    if args.store:
        changes["store"] = args.store
    if args.unseal_key_file:
        changes["unseal_key_file"] = os.path.abspath(args.unseal_key_file)
    if args.passphrase_file:
        changes["passphrase_file"] = os.path.abspath(args.passphrase_file)
    if args.argon2_ops or args.argon2_mem:
        d = Argon2Params()
        changes["kdf"] = Argon2Params(args.argon2_ops or d.ops, args.argon2_mem or d.mem)
    if args.model_memory:
        changes["model_memory_bytes"] = args.model_memory
    if args.model_cma:
        changes["model_cma_bytes"] = args.model_cma
    if args.model_fallback:
        changes["model_fallback"] = True
    return replace(VaultConfig(), **changes)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """``secretvault serve``'s arguments as a :class:`ServerConfig`.

    An option that sets a server field has that field's name as its ``dest``
    (``--grace`` is ``grace_seconds``), so each is passed through by name;
    the ranges are checked once, by :meth:`ServerConfig.validate`.
    """
    given = vars(args)
    server = {f.name: given[f.name] for f in fields(ServerConfig) if f.name in given}
    vault = _vault_config(args)
    agent = server.get("ssh_agent")
    if agent == "":  # --ssh-agent alone: beside the socket
        server["ssh_agent"] = os.path.join(os.path.dirname(vault.socket), AGENT_SOCKET_NAME)
    elif agent is not None:
        server["ssh_agent"] = os.path.abspath(agent)
    return ServerConfig(vault=vault, **server)


def _bind_capabilities(config: ServerConfig) -> tuple[str, ...]:
    """The capabilities binding the listeners may need, kept until they are bound.

    CAP_CHOWN gives a listener's socket and directory a group the server is
    not in (only extra sockets, from the policy or ``listeners``, have one);
    CAP_NET_BIND_SERVICE binds a TCP or metrics port below 1024.
    """
    from secretvault.vault.metrics import split_host_port

    keep = ["chown"] if config.policy_file or config.listeners else []
    ports = [split_host_port(a)[1] for a in (config.tcp, config.metrics) if a]
    if any(0 < p < 1024 for p in ports):
        keep.append("net_bind_service")
    return tuple(keep)


def _drop_capabilities(keep: tuple[str, ...], bounding: tuple[str, ...] = ()) -> None:
    from secretvault.api.errors import BackendError
    from secretvault.backends import drop_capabilities

    try:
        drop_capabilities(keep, bounding=bounding)
    except BackendError as e:
        raise BackendError(f"cannot drop the server's capabilities ({e}); pass "
                           "--keep-capabilities to serve with them") from None


class _StopSignals:
    """From its making until :meth:`restore`, SIGTERM and SIGINT set ``stop``
    (and are recorded, for the line that says what stopped the server)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._received: list[int] = []
        self._previous = {s: signal.signal(s, self._on_signal)
                          for s in (signal.SIGTERM, signal.SIGINT)}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._received.append(signum)
        self.stop.set()

    @property
    def name(self) -> str:
        """The first signal received ("SIGTERM"), or "stop" when none was."""
        return signal.Signals(self._received[0]).name if self._received else "stop"

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM or SIGINT, then drain, zero secret memory, and return 0.

    Raises :class:`~secretvault.api.errors.VaultError` (a one-line message naming
    the fix) when the server cannot start.  Must be called from the main
    thread (it installs the signal handlers, and restores them on return).
    With ``worker_processes`` set, this process supervises that many workers
    (:mod:`secretvault.vault.supervisor`); a worker runs this too, with
    ``config.worker`` set, and says it is ready on stdout.
    """
    if config.worker_processes and config.worker is None:
        return _supervise(config)
    # the server's modules (and grpc with them) load only for serve, and only
    # after main has set GRPC_VERBOSITY
    from secretvault.vault.progress import UnsealProgress
    from secretvault.vault.server import create_server
    from secretvault.vault.summary import summary

    slot = config.worker
    who = "secretvault" if slot is None else f"secretvault worker {slot.index}"

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                            "%(message)s", stream=sys.stderr)
    signals = _StopSignals()
    stop = signals.stop
    try:
        # a bar on a terminal while many key versions unseal; one line after
        after_bind = None
        if not config.keep_capabilities:
            # before the store is unsealed and before any thread starts (threads
            # inherit the sets; capabilities are per thread): every capability
            # but those binding needs goes now, CAP_IPC_LOCK with them
            keep = _bind_capabilities(config)
            _drop_capabilities(keep)
            if keep:
                def after_bind() -> None:
                    _drop_capabilities(())
        progress = UnsealProgress()
        try:
            server = create_server(config, progress=progress, after_bind=after_bind)
        finally:
            progress.close()
        if progress.started:
            print(progress.line(), file=sys.stderr, flush=True)
        with server:
            if slot is None:
                print(summary(server), file=sys.stderr, flush=True)
            else:  # the supervisor prints one summary for every worker
                print(json.dumps({"ready": os.getpid(), "summary": summary(server)}),
                      flush=True)
            while not stop.wait(1.0):
                pass
            server.begin_stop(config.grace_seconds)
            name = signals.name
            print(f"{who}: {name}: draining in-flight calls (up to "
                  f"{config.grace_seconds:g} s), then zeroing secret memory", file=sys.stderr,
                  flush=True)
        # said only when the backend agrees that nothing is mapped any more
        left = server.vault.backend.statistics()
        if left.regions or left.pages_mapped:
            print(f"{who}: stopped, but {left.regions} secret regions "
                  f"({left.pages_mapped} pages) are still mapped", file=sys.stderr, flush=True)
            return 1
        print(f"{who}: stopped; secret memory zeroed and unmapped", file=sys.stderr,
              flush=True)
        return 0
    finally:
        signals.restore()


def _supervise(config: ServerConfig) -> int:
    """``serve --workers N``: bind the public listeners, start the workers, restart
    any that exits, and stop them all on SIGTERM or SIGINT."""
    from secretvault.backends import harden_process
    from secretvault.vault.supervisor import Supervisor

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                            "%(message)s", stream=sys.stderr)
    if config.vault.harden:
        harden_process()  # it holds no key, but its memory is the server's business
    signals = _StopSignals()
    stop = signals.stop
    try:
        after_bind = None
        if not config.keep_capabilities:
            # the supervisor binds the Unix sockets and the metrics port (it may
            # need CAP_CHOWN, CAP_NET_BIND_SERVICE); each worker binds TCP and
            # drops its own after.  A worker is exec'd: as root it gets the
            # supervisor's bounding set as its capabilities, so what the workers
            # need stays there (and only there) for the restarts to come
            workers_need = _bind_capabilities(replace(config, listeners=(), metrics=None))
            _drop_capabilities(_bind_capabilities(config), workers_need)

            def after_bind() -> None:
                _drop_capabilities((), workers_need)
        supervisor = Supervisor(config, after_bind=after_bind).start(stop)
        print(supervisor.summary(), file=sys.stderr, flush=True)
        code = supervisor.run(stop)
        name = signals.name
        if code == 0:
            print(f"secretvault: {name}: every worker drained, zeroed and unmapped its secret "
                  "memory; stopped", file=sys.stderr, flush=True)
        return code
    finally:
        signals.restore()


def cmd_serve(args: argparse.Namespace) -> int:
    config = server_config(args)
    try:
        code = run(config)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        if isinstance(e, PermissionError):
            fix = ("run it as a user who may write there, or choose --socket and --data-dir "
                   "you can write")
        elif isinstance(e, FileNotFoundError):
            fix = "check the path"
        else:
            fix = "check the paths given to serve"
        raise CliError(f"cannot start the vault:{where}: {e.strerror or e}", fix) from None
    if os.environ.get(HOLD_AFTER_STOP_ENV) == "1":
        print("secretvault: holding after stop until a line on stdin", file=sys.stderr,
              flush=True)
        sys.stdin.readline()
    return code
