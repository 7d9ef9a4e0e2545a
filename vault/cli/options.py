"""The parser's building blocks: help layout, usage errors, value types, shared options.

Also ``--version`` and the subcommands whose options are built only once
chosen (:class:`Subcommands`), so that a command loads only its own code.

:mod:`secretvault.vault.cli.parser` builds every subcommand from these.  A
value type checks only what the option itself means (a number, a positive
count); the server's limits are checked once, by its config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from secretvault.api.paths import SOCKET_ENV, default_socket_path
from secretvault.clients._options import DEFAULT_TIMEOUT  # loads no grpc (GRPC_VERBOSITY)
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("secretvault")
    except PackageNotFoundError:
        return "(not installed)"


class Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {_version()}", file=sys.stdout)
        parser.exit()


class Subcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose options are filled in only once they are chosen.

    The parser lists every subcommand by its one-line help (what ``--help``
    at the top shows) and builds only the chosen one's options, importing
    only its module: ``sign`` builds neither ``serve``'s options (whose
    defaults are the server's own config, which loads the server) nor
    ``keys``'s, and loads no ``keys`` or ``stats`` code.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deferred: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        fill = self.deferred.pop(values[0], None) if values else None
        if fill is not None:
            fill(self._name_parser_map[values[0]])
        super().__call__(parser, namespace, values, option_string)


def deferred(sub: Any, name: str, help: str,
              fill: Callable[[argparse.ArgumentParser], None], *, lazy: bool) -> None:
    """Subcommand ``name``: listed now, its options filled in by ``fill`` when it is
    chosen (``lazy``) or now."""
    p = sub.add_parser(name, help=help, formatter_class=Formatter)
    if lazy:
        sub.deferred[name] = fill
    else:
        fill(p)


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


def subcommands(parser: argparse.ArgumentParser, dest: str, name: str, **kwargs: Any) -> Any:
    """The COMMAND argument of ``parser``: each subcommand is added to what this returns."""
    return parser.add_subparsers(dest=dest, metavar="COMMAND", required=True,
                                 parser_class=Parser, title="commands",
                                 help=f"'{name} COMMAND --help' tells more", **kwargs)


def describe(p: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int],
             description: str, *, json_help: str | None = "machine-readable output (JSON)",
             epilog: str | None = None) -> None:
    """Fill a subcommand that runs ``func``: its description, its epilog and ``--json``
    (unless ``json_help`` is None)."""
    p.description = description
    p.epilog = epilog
    p.set_defaults(func=func)
    if json_help:
        p.add_argument("--json", action="store_true", help=json_help)


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
