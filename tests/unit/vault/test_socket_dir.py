"""Socket directories of listeners bound to a group.

The server must be able to give the directory (and the socket) to the
listener's group.  The kernel lets an unprivileged process change a file's
group only to a group it belongs to, so these run ``prepare_socket_dir`` in
a forked child that has dropped to ``nobody`` with chosen supplementary
groups (which needs root to set up).
"""

from __future__ import annotations

import grp
import os
import stat
import tempfile
from collections.abc import Callable, Iterator

import pytest

from secretvault.api.errors import InvalidArgument
from secretvault.vault.listeners import prepare_socket_dir
from secretvault.vault.policy import SocketBinding
from tests.integration._support import cleanup, start

pytestmark = pytest.mark.root

NOBODY = 65534
NOGROUP = 65534
DAEMON = 1  # the listener's group in these tests (Debian's 'daemon')
ADM = 4  # a group left on a directory by an "earlier run" (Debian's 'adm')


@pytest.fixture
def base() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="sv-", dir="/tmp")
    os.chmod(d, 0o755)  # nobody passes through
    run = os.path.join(d, "run")
    os.mkdir(run, 0o755)
    os.chown(run, NOBODY, NOGROUP)  # nobody may create its socket directory here
    yield d
    cleanup(d)


def _as_nobody(fn: Callable[[], None], groups: tuple[int, ...] = ()) -> str:
    """Run ``fn`` in a child as nobody with ``groups`` as supplementary groups:
    "ok", or the exception's class name and message."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(NOGROUP)
            os.setuid(NOBODY)
            try:
                fn()
                out = "ok"
            except BaseException as e:
                out = f"{type(e).__name__}: {e}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def _name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def test_a_group_the_server_is_not_in_is_named_with_the_fix(base: str) -> None:
    sock = os.path.join(base, "run", "app", "vault.sock")
    got = _as_nobody(lambda: prepare_socket_dir(sock, 0o660, DAEMON))
    assert got.startswith("FailedPrecondition: "), got
    name = _name(DAEMON)
    assert f"cannot give the socket directory {base}/run/app to group {name!r} (gid {DAEMON})" \
        in got
    assert "a process may only change a file's group to a group it belongs to" in got
    assert f"this server (uid {NOBODY}, groups {NOGROUP}) is not in {name!r}" in got
    assert "run the vault with that group as a supplementary group" in got
    assert f"SupplementaryGroups={name}" in got and f"--group-add {DAEMON}" in got
    assert "Operation not permitted" not in got
    # nothing is left behind with the wrong group
    assert not os.path.exists(os.path.join(base, "run", "app"))
    # with the group as a supplementary group, the same start works
    assert _as_nobody(lambda: prepare_socket_dir(sock, 0o660, DAEMON), (DAEMON,)) == "ok"
    st = os.stat(os.path.join(base, "run", "app"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, DAEMON, 0o710)


def test_a_leftover_directory_of_the_vault_with_another_group_is_repaired(base: str) -> None:
    app = os.path.join(base, "run", "app")
    os.mkdir(app, 0o700)
    os.chown(app, NOBODY, NOGROUP)  # an earlier run's, without the group
    got = _as_nobody(lambda: prepare_socket_dir(os.path.join(app, "v.sock"), 0o660, DAEMON),
                     (DAEMON,))
    assert got == "ok"
    st = os.stat(app)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, DAEMON, 0o710)


def test_a_leftover_directory_of_the_vault_is_repaired_only_with_the_group(base: str) -> None:
    app = os.path.join(base, "run", "app")
    os.mkdir(app, 0o700)
    os.chown(app, NOBODY, NOGROUP)
    # nobody is not in the listener's group: the kernel's rule, named
    got = _as_nobody(lambda: prepare_socket_dir(os.path.join(app, "v.sock"), 0o660, DAEMON))
    assert got.startswith("FailedPrecondition: cannot give the socket directory"), got
    assert "supplementary group" in got
    assert os.stat(app).st_gid == NOGROUP  # left as it was


def test_a_leftover_directory_the_vault_does_not_own_is_refused(base: str) -> None:
    app = os.path.join(base, "run", "app")
    os.mkdir(app, 0o750)
    os.chown(app, 0, ADM)  # root's, with another group
    got = _as_nobody(lambda: prepare_socket_dir(os.path.join(app, "v.sock"), 0o660, DAEMON),
                     (DAEMON,))
    assert got.startswith("FailedPrecondition: "), got
    assert f"belongs to group {_name(ADM)!r} (gid {ADM}) (mode 0750)" in got
    assert f"needs group {_name(DAEMON)!r} (gid {DAEMON}) (mode 0710)" in got
    assert f"chgrp {DAEMON} {app} && chmod 710 {app}" in got
    st = os.stat(app)
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (ADM, 0o750)  # untouched


def test_root_repairs_its_own_leftover_directory(base: str) -> None:
    app = os.path.join(base, "app")
    os.mkdir(app, 0o700)
    os.chown(app, 0, ADM)
    prepare_socket_dir(os.path.join(app, "v.sock"), 0o660, DAEMON)
    st = os.stat(app)
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (DAEMON, 0o710)
    # the right group but no way through for it: the search bit is added
    os.chmod(app, 0o700)
    prepare_socket_dir(os.path.join(app, "v.sock"), 0o660, DAEMON)
    assert stat.S_IMODE(os.stat(app).st_mode) == 0o710
    # a sound directory is left alone
    os.chmod(app, 0o711)
    prepare_socket_dir(os.path.join(app, "v.sock"), 0o660, DAEMON)
    assert stat.S_IMODE(os.stat(app).st_mode) == 0o711


@pytest.mark.memfd_secret
def test_listeners_in_one_directory_cannot_need_two_groups(base: str) -> None:
    shared = os.path.join(base, "shared")
    listeners = (SocketBinding(os.path.join(shared, "a.sock"), "a", 0o660, DAEMON),
                 SocketBinding(os.path.join(shared, "b.sock"), "b", 0o660, ADM))
    with pytest.raises(InvalidArgument, match=r"share the directory .* but need different "
                       r"groups"):
        start(base, listeners=listeners)
    assert not os.path.exists(shared)  # refused before anything was made

