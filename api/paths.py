"""Default locations shared by the server and its clients."""

from __future__ import annotations

import os

SOCKET_ENV = "SECRETVAULT_SOCKET"
SOCKET_NAME = "secretvault.sock"
#: the SSH agent socket ``serve --ssh-agent`` makes beside the default socket
AGENT_SOCKET_NAME = "ssh-agent.sock"


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


def default_agent_socket_path() -> str:
    """The owner's SSH agent socket: ``ssh-agent.sock`` beside the default socket."""
    return os.path.join(os.path.dirname(default_socket_path()), AGENT_SOCKET_NAME)
