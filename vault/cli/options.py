"""The parser's building blocks: help layout, usage errors, value types, shared options.

:mod:`secretvault.vault.cli.parser` builds every subcommand from these.  A
value type checks only what the option itself means (a number, a positive
count); the server's limits are checked once, by its config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from secretvault.api.paths import SOCKET_ENV, default_socket_path
from secretvault.clients._types import DEFAULT_TIMEOUT  # loads no grpc (GRPC_VERBOSITY)
from secretvault.vault.cli.errors import EXIT_ERROR


class Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps text with line breaks (epilogs) as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """Usage errors: the usage line, then one line naming the problem and the fix."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} "
                              f"(fix: see '{self.prog} --help')\n")


# --- value types ------------------------------------------------------------------------------


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


# --- subcommands and the options they share ---------------------------------------------------


def subcommands(parser: argparse.ArgumentParser, dest: str, name: str) -> Any:
    """The COMMAND argument of ``parser``: each subcommand is added to what this returns."""
    return parser.add_subparsers(dest=dest, metavar="COMMAND", required=True,
                                 parser_class=Parser, title="commands",
                                 help=f"'{name} COMMAND --help' tells more")


def leaf(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str,
         description: str, *, json_help: str | None = "machine-readable output (JSON)",
         epilog: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that runs ``func``, with ``--json`` unless ``json_help`` is None."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=Formatter
    )
    p.set_defaults(func=func)
    if json_help:
        p.add_argument("--json", action="store_true", help=json_help)
    return p


def in_out(p: argparse.ArgumentParser, what: str, out: str | None) -> None:
    """``--in FILE`` for the input and, when there is one, ``--out FILE`` for the output."""
    p.add_argument("--in", dest="infile", metavar="FILE",
                   help=f"read the {what} from FILE (default: stdin)")
    if out:
        p.add_argument("--out", metavar="FILE", help=f"write the {out} to FILE (default: stdout)")


def key_name(p: argparse.ArgumentParser, help: str = "the key's name") -> None:
    p.add_argument("name", metavar="NAME", help=help)


def connection_options(parser: argparse.ArgumentParser) -> None:
    """Where the vault is: its Unix socket, or TCP with TLS; and the call timeout."""
    g = parser.add_argument_group("connection")
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--socket", metavar="PATH", default=argparse.SUPPRESS,
        help=f"the vault's Unix socket (default: ${SOCKET_ENV}, else {default_socket_path()})",
    )
    where.add_argument(
        "--connect", metavar="HOST:PORT",
        help="a vault listening on TCP with TLS instead of a socket (needs --ca-cert)",
    )
    g.add_argument("--ca-cert", metavar="FILE", help="PEM CA certificate that signed the "
                   "vault's TLS certificate (with --connect)")
    g.add_argument("--client-cert", metavar="FILE",
                   help="PEM client certificate for mutual TLS (with --client-key)")
    g.add_argument("--client-key", metavar="FILE", help="PEM key of --client-cert")
    g.add_argument("--server-name", metavar="NAME",
                   help="the name to expect in the vault's certificate, if not HOST")
    g.add_argument("--timeout", metavar="SECONDS", type=positive_float, default=DEFAULT_TIMEOUT,
                   help=f"give up on a call after this long (default: {DEFAULT_TIMEOUT:g})")
