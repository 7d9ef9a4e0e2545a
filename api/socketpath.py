"""Whether a Unix socket's path can be trusted: every directory on it, up to ``/``.

Whoever may change a directory on the path may rename what lies below it and
put a directory (and a socket) of their own in its place: a client would
then send its requests, messages included, to their server.  So, as
OpenSSH's StrictModes checks a path (``safe_path`` in its ``misc.c``),
every directory from the socket's own up to ``/`` must be

- owned by root or by a trusted user (the server's: this process's own), and
- not writable by its group or by others, unless it has the sticky bit.

**Sticky directories** (``/tmp``, mode 1777) are accepted: anyone may create
entries in them, but only an entry's owner (or the directory's, or root) may
rename or remove it, and the entry below must itself be owned by root or a
trusted user, so it cannot be swapped.  What a sticky directory does not
stop is a name taken *before* its owner makes it; the server refuses a
socket directory it does not own, and the client trusts the owner of the
socket's directory (the server's user, who may own the directories above it
too) only when that directory lies where no one else may write, even with
the sticky bit.

A **symlink** on the path is followed: its own directory is checked like any
other, and so is every directory its target passes through.  A directory
that does not exist yet is skipped: the server creates it, and a client
finds nothing to connect to.

A directory named in ``$SECRETVAULT_TRUST_SOCKET_DIRS`` (``:``-separated)
is accepted as it is, for a volume only trusted processes can reach (a
Kubernetes emptyDir is world-writable but private to its pod); the
directories above it are still checked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection

from secretvault.api.errors import UnsafeSocketPath

TRUST_ENV = "SECRETVAULT_TRUST_SOCKET_DIRS"
_MAX_LINKS = 40  # as the kernel's ELOOP


def trusted_dirs() -> frozenset[str]:
    """The directories ``$SECRETVAULT_TRUST_SOCKET_DIRS`` accepts as they are."""
    raw = os.environ.get(TRUST_ENV, "")
    return frozenset(os.path.normpath(os.path.abspath(d)) for d in raw.split(":") if d)


def _ancestors(directory: str) -> list[str]:
    """``directory`` and every directory above it, up to ``/``."""
    out = [directory]
    while directory != "/":
        directory = os.path.dirname(directory)
        out.append(directory)
    return out


def check_socket_path(path: str, *, uids: Collection[int], foreign_socket_dir: bool = False,
                      skip_socket_dir: bool = False, what: str = "the socket") -> list[str]:
    """Refuse (:class:`UnsafeSocketPath`) a socket path another user could redirect.

    ``uids``: who besides root may own a directory on it.  With
    ``foreign_socket_dir`` (a client), so may the owner of the socket's own
    directory (the server's user), provided that directory's parent admits
    no other writer (not even with the sticky bit: anyone could have made it
    there).
    With ``skip_socket_dir`` (the server, which checks and makes its own
    socket directory itself), only the directories above it are checked.
    Returns the directories accepted only because they are trusted
    (``$SECRETVAULT_TRUST_SOCKET_DIRS``), for the caller to warn about.
    """
    path = os.path.normpath(os.path.abspath(path))
    trusted = trusted_dirs()
    owners = {0, *uids}
    mine = frozenset(owners)
    if foreign_socket_dir:
        try:
            # the server's user: may own the socket's directory and those above
            owners.add(os.stat(os.path.dirname(path)).st_uid)
        except OSError:
            pass
    waived: list[str] = []
    links = 0
    # (directory, is the socket's own directory): a symlink adds its target's
    pending = [(d, i == 0) for i, d in enumerate(_ancestors(os.path.dirname(path)))]
    if skip_socket_dir:
        pending = pending[1:]
    seen: set[str] = set()
    while pending:
        directory, own = pending.pop(0)
        if directory in seen:
            continue
        seen.add(directory)
        try:
            st = os.lstat(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue  # made later by the server; nothing to connect to for a client
        except PermissionError:
            continue  # unreachable for us: the connect fails on its own
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise UnsafeSocketPath(f"too many symlinks on {what} path {path}")
            # a relative target is read from the link's real parent, as the
            # kernel does ('..' of a linked parent is not the spelled one)
            target = os.path.normpath(os.path.join(os.path.realpath(os.path.dirname(directory)),
                                                   os.readlink(directory)))
            pending[:0] = [(d, own and i == 0) for i, d in enumerate(_ancestors(target))]
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue  # the connect or the bind fails on its own
        found = _problem(directory, st, owners,
                         own and foreign_socket_dir and st.st_uid not in mine)
        if found is None:
            continue
        problem, blamed = found
        if blamed in trusted:
            if blamed not in waived:
                waived.append(blamed)
            continue
        raise UnsafeSocketPath(
            f"{what} {path} is not safe: the directory {directory} {problem}, so another "
            "user could put a socket of their own in its place",
            _fix(blamed, os.stat(blamed), owners))
    return waived


def _problem(directory: str, st: os.stat_result, owners: set[int],
             foreign: bool) -> tuple[str, str] | None:
    """What is wrong with ``directory``, and the directory to change about it."""
    mode = stat.S_IMODE(st.st_mode)
    writers = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if foreign:
        # the server's directory, seen by a client: safe only if nobody else
        # could have made it
        if writers:
            return f"is writable by {_who(writers)} (mode {mode:04o})", directory
        parent = os.path.dirname(directory)
        try:
            pmode = stat.S_IMODE(os.stat(parent).st_mode)
        except OSError:
            pmode = 0
        if parent != directory and pmode & (stat.S_IWGRP | stat.S_IWOTH):
            return (f"belongs to uid {st.st_uid} and lies in {parent} (mode {pmode:04o}), "
                    "where any user could have made it", parent)
        return None
    if st.st_uid not in owners:
        return f"belongs to uid {st.st_uid}, not to {_names(owners)}", directory
    if writers and not mode & stat.S_ISVTX:
        return f"is writable by {_who(writers)} (mode {mode:04o}, no sticky bit)", directory
    return None


def _names(owners: set[int]) -> str:
    others = sorted(owners - {0})
    return "root" + "".join(f" or uid {u}" for u in others)


def _who(bits: int) -> str:
    if bits & stat.S_IWOTH and bits & stat.S_IWGRP:
        return "its group and others"
    return "others" if bits & stat.S_IWOTH else "its group"


def _fix(directory: str, st: os.stat_result, owners: set[int]) -> str:
    if st.st_uid in owners:
        return (f"'chmod go-w {directory}' (or 'chmod +t {directory}'), or choose a socket "
                f"path whose directories only root and its owner can change (e.g. "
                f"/run/secretvault or $XDG_RUNTIME_DIR); to accept it knowingly, "
                f"{TRUST_ENV}={directory}")
    return (f"choose a socket path whose directories belong to {_names(owners)} (e.g. "
            f"/run/secretvault or $XDG_RUNTIME_DIR); to accept it knowingly, "
            f"{TRUST_ENV}={directory}")
