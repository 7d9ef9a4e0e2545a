"""Unix-socket safety: the socket's directory, stale sockets, binding and removal.

A Unix socket is guarded by its file's owner, group and mode, and by its
directory and every one above it: whoever may write any of them may replace
the socket with their own.  So the directories above must pass
:func:`secretvault.api.socketpath.check_socket_path` (root's or the server's
user's, not writable by others unless sticky), the directory is created (or
checked) to be writable by its owner only and to let through exactly the
users the socket's mode admits, a socket left by a dead server is cleared
but a live one never is, and the socket file is never reachable with a wider
mode than it is given.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
from collections.abc import Callable

import grpc

from secretvault.api.errors import FailedPrecondition, InvalidArgument
from secretvault.api.socketpath import TRUST_ENV, check_socket_path
from secretvault.vault.config import ServerConfig
from secretvault.vault.policy import OWNER, Policy, SocketBinding

log = logging.getLogger("secretvault.server")


def unix_bindings(config: ServerConfig, policy: Policy) -> list[SocketBinding]:
    """Every Unix socket to serve: the default one, the configured ones, the policy's.

    Refused when two share a path, or share a directory but need different
    groups.
    """
    out: list[SocketBinding] = []
    if config.unix_socket:
        out.append(SocketBinding(config.vault.socket, OWNER, 0o600, None))
    out.extend(config.listeners)
    out.extend(policy.sockets)
    paths = [os.path.abspath(u.path) for u in out]
    if len(set(paths)) != len(paths):
        raise InvalidArgument("two listeners share one socket path")
    # a directory has one group: two listeners there cannot each have theirs
    groups: dict[str, tuple[int, str]] = {}
    for u in out:
        if u.group is None:
            continue
        directory = os.path.dirname(os.path.abspath(u.path))
        other = groups.setdefault(directory, (u.group, u.path))
        if other[0] != u.group:
            raise InvalidArgument(
                f"the listeners {other[1]} and {u.path} share the directory {directory} "
                f"but need different groups ({other[0]} and {u.group}): give each its "
                "own directory")
    return out


def _dir_mode(mode: int) -> int:
    """The socket directory's mode: only as open as the socket needs to be reached."""
    if mode & 0o007:
        return 0o711
    if mode & 0o070:
        return 0o710
    return 0o700


def _group_token(gid: int) -> str:
    """The group's name, or its number when it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _group_name(gid: int) -> str:
    token = _group_token(gid)
    return f"gid {gid}" if token == str(gid) else f"{token!r} (gid {gid})"


def _chgrp(path: str, group: int, what: str) -> None:
    """Give ``path`` to ``group``, or say exactly why the kernel refused.

    An unprivileged process may change a file's group only to a group it is
    a member of (its effective or a supplementary gid), and only on a file
    it owns; CAP_CHOWN (root) may give any group.  EPERM here is that rule,
    not a missing write permission.
    """
    try:
        os.chown(path, -1, group)
    except PermissionError:
        mine = sorted({os.getegid(), *os.getgroups()})
        name = _group_name(group)
        raise FailedPrecondition(
            f"cannot give {what} {path} to group {name}: a process may only change a "
            f"file's group to a group it belongs to, and this server (uid {os.geteuid()}, "
            f"groups {', '.join(str(g) for g in mine)}) is not in {name}. Fix: run the vault "
            f"with that group as a supplementary group (systemd: SupplementaryGroups="
            f"{_group_token(group)}; docker/podman: --group-add {group}; or add the vault's "
            "user to the group), or give the listener a group the vault is in") from None


def prepare_socket_dir(path: str, mode: int = 0o600, group: int | None = None) -> None:
    """Create the socket's directory safely, or check (and repair) the existing one.

    A directory others can write to would let them replace our socket with
    theirs (and collect requests, messages included), so it is refused.
    With a ``group``, the directory must belong to it (its members pass
    through it to reach the socket): a directory left with another group by
    an earlier run is given the right one when the vault owns it, and
    refused when it does not.
    """
    directory = os.path.dirname(os.path.abspath(path))
    # every directory above: whoever may change one could swap ours for theirs
    for waived in check_socket_path(path, uids={os.geteuid()}, skip_socket_dir=True):
        log.warning("the socket directory %s of %s could be changed by another user; accepted "
                    "because %s names it", waived, path, TRUST_ENV)
    want = _dir_mode(mode)
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            os.mkdir(directory, want)
        except FileExistsError:  # created meanwhile: check it like any other
            return prepare_socket_dir(path, mode, group)
        os.chmod(directory, want)  # mkdir's mode is filtered by the umask
        if group is not None:
            try:
                _chgrp(directory, group, "the socket directory")
            except FailedPrecondition:
                os.rmdir(directory)  # not left behind with the wrong group
                raise
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(
            f"the socket directory {directory} is not a directory (or is a symlink)")
    if st.st_uid not in (os.geteuid(), 0):
        raise FailedPrecondition(
            f"the socket directory {directory} belongs to uid {st.st_uid}, not to this "
            f"server (uid {os.geteuid()}) or root: choose another --socket")
    if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        raise FailedPrecondition(
            f"the socket directory {directory} is writable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): another user could replace the socket. Use a "
            "directory only the server's user can write, e.g. /run/secretvault or "
            "$XDG_RUNTIME_DIR/secretvault")
    if group is None:
        return
    current = stat.S_IMODE(st.st_mode)
    # the search (x) bits the listener's users need to pass through
    missing = want & 0o011 & ~current
    if st.st_gid == group and not missing:
        return
    if st.st_uid != os.geteuid():
        # root's directory, and this server is not root: it may not repair it
        raise FailedPrecondition(
            f"the socket directory {directory} belongs to group {_group_name(st.st_gid)} "
            f"(mode {current:04o}), but the listener for {path} needs group "
            f"{_group_name(group)} (mode {want:04o}) to let that group's members through. "
            f"It is owned by uid {st.st_uid}, not by this server (uid {os.geteuid()}), so the "
            f"vault cannot repair it: run 'chgrp {group} {directory} && chmod {want:o} "
            f"{directory}' as its owner, or remove it and let the vault create it")
    if st.st_gid != group:
        # left by an earlier run with another group: ours, so repaired
        _chgrp(directory, group, "the socket directory")
        log.warning("the socket directory %s belonged to group %s: given to %s", directory,
                    _group_name(st.st_gid), _group_name(group))
    if missing:
        os.chmod(directory, current | missing)


def clear_stale_socket(path: str) -> None:
    """Remove a socket left by a dead server; refuse to touch a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        # nothing listens: the socket file outlived its server
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        raise FailedPrecondition(f"cannot check whether {path} is in use: {e.strerror}") from None
    finally:
        probe.close()
    raise FailedPrecondition(
        f"another server is already listening on {path}: stop it or choose another --socket")


def bind_unix(server: grpc.Server, listener: SocketBinding) -> None:
    """Add ``listener``'s socket to ``server``: its directory checked, a stale socket
    cleared, the file created 0600 and then given its group and mode."""

    def create(path: str) -> None:
        try:
            port = server.add_insecure_port(f"unix:{path}")
        except RuntimeError as e:
            raise FailedPrecondition(f"cannot listen on {path}: {e}") from None
        if port == 0:
            raise FailedPrecondition(f"cannot listen on {path}")

    bind_socket(listener, create)


#: connections a relayed public socket lets wait to be accepted (the kernel caps
#: it at net.core.somaxconn)
LISTEN_BACKLOG = 4096


def listen_unix(listener: SocketBinding) -> socket.socket:
    """A listening socket of our own at ``listener``'s path, guarded as :func:`bind_unix`
    guards grpc's (``serve --workers``: the supervisor's public sockets)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

    def add(path: str) -> None:
        try:
            sock.bind(path)
            sock.listen(LISTEN_BACKLOG)
        except OSError as e:
            raise FailedPrecondition(f"cannot listen on {path}: {e.strerror}") from None

    try:
        bind_socket(listener, add)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_socket(listener: SocketBinding, create: Callable[[str], None]) -> None:
    """Make ``listener``'s socket with ``create(path)`` (a gRPC port, the SSH agent's
    own socket), guarded as every listener is: its directory checked, a stale
    socket cleared, the file created 0600 and then given its group and mode."""
    path = listener.path
    prepare_socket_dir(path, listener.mode, listener.group)
    clear_stale_socket(path)
    # the socket file is made by create(); the umask makes it 0600 from its
    # first instant (the mode is then widened, never narrowed, and the
    # directory already keeps strangers out)
    old = os.umask(0o177)
    try:
        create(path)
    finally:
        os.umask(old)
    if not os.path.exists(path):
        raise FailedPrecondition(f"cannot listen on {path}")
    try:
        if listener.group is not None:
            _chgrp(path, listener.group, "the socket")
        os.chmod(path, listener.mode)
    except BaseException:
        remove_socket(path)  # not left behind half-configured
        raise
    dmode = stat.S_IMODE(os.stat(os.path.dirname(os.path.abspath(path))).st_mode)
    if (listener.mode & 0o060 and not dmode & 0o010) or (listener.mode & 0o006
                                                         and not dmode & 0o001):
        log.warning("%s is mode %04o but its directory (mode %04o) does not let those users "
                    "through: give the listener a directory of its own", path, listener.mode,
                    dmode)


def remove_socket(path: str) -> None:
    """Unlink the socket at ``path``, if a socket is still there (never another file)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
