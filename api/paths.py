"""Default locations shared by the server and its clients."""

from __future__ import annotations

import os

SOCKET_ENV = "SECRETVAULT_SOCKET"
SOCKET_NAME = "secretvault.sock"


def default_socket_path() -> str:
    """``$SECRETVAULT_SOCKET``, else the per-user runtime directory.

    root: ``/run/secretvault/secretvault.sock``; others:
    ``$XDG_RUNTIME_DIR/secretvault/secretvault.sock``, falling back to
    ``/tmp/secretvault-UID/secretvault.sock``.
    """
    env = os.environ.get(SOCKET_ENV)
    if env:
        return env
    if os.geteuid() == 0:
        return os.path.join("/run/secretvault", SOCKET_NAME)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "secretvault", SOCKET_NAME)
    return os.path.join(f"/tmp/secretvault-{os.geteuid()}", SOCKET_NAME)  # noqa: S108
