"""One worker of ``secretvault serve --workers N``: started by the supervisor, never by hand.

``python -m secretvault.vault.cli.worker`` reads its
:class:`~secretvault.vault.config.ServerConfig` (with ``worker`` set) from
stdin, asks the kernel to send it SIGTERM when the supervisor dies, and runs
:func:`secretvault.vault.cli.serve.run`: it opens the store shared, unseals
every key into its own secret memory, binds its private sockets and the
shared TCP port, and writes one JSON line on stdout when it is ready.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys

from secretvault.vault.config import ServerConfig

#: the status of a worker whose supervisor was gone before it could be told to follow it
EXIT_ORPHAN = 4


def main() -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc loads, as the command does
    # its own parent's pipe, written by the supervisor: trusted as the supervisor is
    config = pickle.load(sys.stdin.buffer)  # noqa: S301
    if not isinstance(config, ServerConfig) or config.worker is None:
        print("secretvault: error: this is a worker of 'serve --workers'; run 'secretvault "
              "serve' instead", file=sys.stderr)
        return 2
    from secretvault.backends import set_parent_death_signal

    set_parent_death_signal(signal.SIGTERM)
    # the supervisor may have died before the line above: then nobody would stop us
    if os.getppid() != config.worker.supervisor_pid:
        return EXIT_ORPHAN
    from secretvault.api.errors import VaultError
    from secretvault.vault.cli.serve import run

    try:
        return run(config)
    except VaultError as e:
        print(f"secretvault: error: worker {config.worker.index}: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"secretvault: error: worker {config.worker.index}: cannot start:{where}: "
              f"{e.strerror or e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
