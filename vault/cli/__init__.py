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

import os
import sys
from collections.abc import Sequence

from secretvault.api.errors import ConnectionFailed, VaultError
from secretvault.vault.cli.connect import connection_fix, target
from secretvault.vault.cli.errors import EXIT_OK, CliError, fail, fix_for
from secretvault.vault.cli.parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    # grpc's C core logs some failures (a TLS handshake refused...) to fd 2 at
    # INFO level; the command reports them itself, in one line.  Read when
    # grpc initialises, so before the first channel; GRPC_VERBOSITY=DEBUG
    # in the environment still wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser(lazy=True)
    args = parser.parse_args(argv)
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


__all__ = ["main"]
