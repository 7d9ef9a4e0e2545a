"""The ``secretvault`` command (also ``python -m secretvault``).

``serve`` runs the server (:mod:`secretvault.vault.cli.serve`); every other
subcommand is a client of it, built on :mod:`secretvault.clients`.  A user
mistake — a bad argument, a missing file, an unknown key, an unreachable
vault — ends with one line on stderr naming the problem and the fix, and a
non-zero exit status, never a traceback.

Exit status: 0 success; 1 the check ran and failed (``verify``,
``verify-mac``: the signature or MAC does not match); 2 the command could not
do its job (usage error, error from the vault, unreadable file).

The package, by concern: :mod:`~secretvault.vault.cli.parser` (every
subcommand and its options, built only for the command given, from the
building blocks in :mod:`~secretvault.vault.cli.options`; ``serve``'s in
:mod:`~secretvault.vault.cli.parser_serve`); one module per command group
(:mod:`~secretvault.vault.cli.serve`, :mod:`~secretvault.vault.cli.keys`,
:mod:`~secretvault.vault.cli.crypto`, :mod:`~secretvault.vault.cli.stats`;
``model`` is :mod:`secretvault.backends.model.report`'s own);
:mod:`~secretvault.vault.cli.render` for tables and JSON,
:mod:`~secretvault.vault.cli.files` for inputs and outputs,
:mod:`~secretvault.vault.cli.connect` for reaching the vault, and
:mod:`~secretvault.vault.cli.errors` for how a command ends.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from secretvault.api.errors import ConnectionFailed, VaultError
from secretvault.vault.cli.connect import connection_fix, target
from secretvault.vault.cli.errors import EXIT_OK, CliError, fail, fix_for
from secretvault.vault.cli.parser import build_parser

#: the commands that end as the interpreter normally does (they run, or load, the
#: server's own code); every other one is a client call, ended by :func:`run` at once
_FULL_EXIT = frozenset({"serve", "model"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``); its exit status."""
    return _dispatch(_parse(argv))


def run() -> NoReturn:
    """The ``secretvault`` script and ``python -m secretvault``: :func:`main`, then exit.

    After a client command, once stdout and stderr are flushed, the process
    ends with ``os._exit``: tearing the interpreter down (grpc's modules and
    threads among it) would add about 15 ms to a call that has nothing left to
    do (every file it wrote is closed, the channel too).  ``serve`` and
    ``model`` exit as usual, as does anything that raised.
    """
    args = _parse(None)
    code = _dispatch(args)
    if args.command in _FULL_EXIT:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)  # let the usual exit report what could not be written
    os._exit(code)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    # grpc's C core logs some failures (a TLS handshake refused...) to fd 2 at
    # INFO level; the command reports them itself, in one line.  Read when
    # grpc initialises, so before the first channel; GRPC_VERBOSITY=DEBUG
    # in the environment still wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    return build_parser(lazy=True).parse_args(argv)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        result: int = args.func(args)
        return result
    except CliError as e:
        return fail(e.problem, e.fix)
    except ConnectionFailed:
        # grpc's own detail ("failed to connect to all addresses; ...") says
        # less than what is on disk: name the target, then the likely cause
        return fail(f"ConnectionFailed: cannot reach the vault at {target(args)}",
                    connection_fix(args))
    except VaultError as e:
        return fail(f"{type(e).__name__}: {e}", fix_for(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (| head): not an error worth a message
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    # Python flushes stdout again at exit and would report the broken pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


__all__ = ["main", "run"]
