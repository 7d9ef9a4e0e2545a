"""``secretvault ssh-agent``: the line that points SSH at the vault's agent socket.

Like ``ssh-agent`` itself, it prints ``SSH_AUTH_SOCK=PATH; export
SSH_AUTH_SOCK;`` (``-c``: ``setenv SSH_AUTH_SOCK PATH;``) for ``eval``.  The
socket is the one ``serve --ssh-agent`` makes beside the vault's socket
(``--socket``, ``$SECRETVAULT_SOCKET``); ``--agent-socket PATH`` names another,
e.g. an identity's ``agent_sockets`` path.  It checks first that an
agent answers there, through directories no other user could swap, so the
line never points SSH at nothing or at someone else's socket.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import struct

from secretvault.api.errors import UnsafeSocketPath
from secretvault.api.paths import AGENT_SOCKET_NAME, default_agent_socket_path
from secretvault.api.socketpath import check_socket_path
from secretvault.vault.cli.errors import EXIT_OK, CliError

_REQUEST_IDENTITIES = b"\0\0\0\x01\x0b"
_IDENTITIES_ANSWER = 12


def _answers(path: str) -> bool:
    """Whether an SSH agent answers REQUEST_IDENTITIES on ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        try:
            s.connect(path)
            s.sendall(_REQUEST_IDENTITIES)
            head = s.recv(5)
        except OSError:
            return False
    return len(head) == 5 and struct.unpack(">IB", head)[1] == _IDENTITIES_ANSWER


def cmd_ssh_agent(args: argparse.Namespace) -> int:
    if args.agent_socket:
        path = os.path.abspath(args.agent_socket)
    elif args.socket:  # beside the vault's socket, where serve --ssh-agent puts it
        path = os.path.join(os.path.dirname(os.path.abspath(args.socket)), AGENT_SOCKET_NAME)
    else:
        path = default_agent_socket_path()
    fix = ("start the vault with its agent: 'secretvault serve --ssh-agent' (or name the "
           "socket with --agent-socket PATH)")
    try:
        check_socket_path(path, uids={os.geteuid()}, foreign_socket_dir=True,
                          what="the agent socket")
    except UnsafeSocketPath as e:
        raise CliError(f"UnsafeSocketPath: {e}", "use a socket in a directory only its "
                       "owner can write") from None
    if not _answers(path):
        raise CliError(f"no SSH agent answers on {path}", fix)
    quoted = shlex.quote(path)
    if args.csh:
        print(f"setenv SSH_AUTH_SOCK {quoted};")
    else:
        print(f"SSH_AUTH_SOCK={quoted}; export SSH_AUTH_SOCK;")
    return EXIT_OK
