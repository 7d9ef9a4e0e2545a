"""Reaching the vault: its socket or TLS address, the client, and what to do when it
does not answer."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from secretvault.api.paths import SOCKET_ENV, default_socket_path
from secretvault.vault.cli.errors import CliError

if TYPE_CHECKING:  # the client (and grpc) load only when a subcommand needs them
    from secretvault.clients import VaultClient


def socket_path(args: argparse.Namespace) -> str:
    path: str | None = getattr(args, "socket", None)
    return os.path.abspath(path or default_socket_path())


def _client(args: argparse.Namespace) -> VaultClient:
    from secretvault.clients import TlsConfig, VaultClient

    if args.connect:
        if not args.ca_cert:
            raise CliError(
                f"--connect {args.connect} needs the CA that signed the vault's certificate",
                "add --ca-cert FILE (and --client-cert/--client-key for mutual TLS)",
            )
        if bool(args.client_cert) != bool(args.client_key):
            raise CliError(
                "mutual TLS needs both --client-cert and --client-key", "give both, or neither"
            )
        try:
            tls = TlsConfig.from_files(
                args.ca_cert, args.client_cert, args.client_key, args.server_name
            )
        except OSError as e:
            raise CliError(
                f"cannot read a TLS file: {e.filename}: {e.strerror}", "check the path"
            ) from None
        return VaultClient(args.connect, tls=tls, timeout=args.timeout)
    return VaultClient(socket_path(args), timeout=args.timeout)


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[VaultClient]:
    """A client of the vault the options name, closed when the block ends."""
    client = _client(args)
    try:
        yield client
    finally:
        client.close()


def connection_fix(args: argparse.Namespace) -> str:
    """What to do when the vault cannot be reached, from what is on disk."""
    if getattr(args, "connect", None):
        return (
            f"check that the vault listens on {args.connect} with TLS "
            "('secretvault serve --tcp ...') and that --ca-cert matches its certificate"
        )
    path = socket_path(args)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (
            f"no vault socket at {path}: start one with 'secretvault serve', or point to it "
            f"with --socket PATH or {SOCKET_ENV}"
        )
    except PermissionError:
        return f"you may not reach {path}: ask the vault's operator for access"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} is not a socket: pass the vault's socket with --socket PATH"
    if not os.access(path, os.R_OK | os.W_OK):
        return (
            f"you may not connect to {path} (mode {stat.S_IMODE(st.st_mode):o}): "
            "ask the vault's operator for access"
        )
    return f"nothing answers on {path}: the vault may have stopped; restart 'secretvault serve'"


def target(args: argparse.Namespace) -> str:
    """The vault's address as a message names it."""
    address: str | None = getattr(args, "connect", None)
    return address if address else f"unix:{socket_path(args)}"
