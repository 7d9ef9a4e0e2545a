"""The socket path rules on real directory trees (issue 13, item 3)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from secretvault.api.errors import UnsafeSocketPath
from secretvault.api.socketpath import TRUST_ENV, check_socket_path

pytestmark = pytest.mark.root

NOBODY = 65534


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with tempfile.TemporaryDirectory(prefix="sv-", dir="/tmp") as d:
        yield d


def _dir(path: str, mode: int, owner: int = 0) -> str:
    os.mkdir(path)
    os.chown(path, owner, owner)
    os.chmod(path, mode)
    return path


def test_missing_directories_are_left_to_their_maker(base: str) -> None:
    assert check_socket_path(f"{base}/a/b/c/vault.sock", uids={0}) == []


def test_a_group_writable_sticky_directory_is_accepted(base: str) -> None:
    p = _dir(f"{base}/p", 0o1770)
    _dir(f"{p}/sv", 0o700)
    assert check_socket_path(f"{p}/sv/vault.sock", uids={0}) == []


def test_the_server_trusts_only_root_and_itself(base: str) -> None:
    p = _dir(f"{base}/p", 0o755, NOBODY)
    with pytest.raises(UnsafeSocketPath, match=f"{p} belongs to uid {NOBODY}, not to root, "):
        check_socket_path(f"{p}/sv/vault.sock", uids={0}, skip_socket_dir=True)
    assert check_socket_path(f"{p}/sv/vault.sock", uids={NOBODY}) == []


def test_a_client_accepts_the_servers_own_directory_only_where_none_else_writes(
        base: str) -> None:
    sv = _dir(f"{base}/sv", 0o710, NOBODY)
    assert check_socket_path(f"{sv}/vault.sock", uids={0}, foreign_socket_dir=True) == []
    # the server's user may own the directories above too (compose's volume)
    app = _dir(f"{sv}/app", 0o710, NOBODY)
    assert check_socket_path(f"{app}/vault.sock", uids={0}, foreign_socket_dir=True) == []
    os.rmdir(app)
    with pytest.raises(UnsafeSocketPath, match="belongs to uid"):
        check_socket_path(f"{sv}/vault.sock", uids={0})
    os.chmod(sv, 0o730)
    with pytest.raises(UnsafeSocketPath, match=r"writable by its group \(mode 0730\)"):
        check_socket_path(f"{sv}/vault.sock", uids={0}, foreign_socket_dir=True)


def test_trusted_directories_are_waived_but_not_those_above(
        base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _dir(f"{base}/p", 0o777)
    q = _dir(f"{p}/q", 0o777)
    monkeypatch.setenv(TRUST_ENV, q)
    with pytest.raises(UnsafeSocketPath, match=f"the directory {p} "):
        check_socket_path(f"{q}/sv/vault.sock", uids={0})
    monkeypatch.setenv(TRUST_ENV, f"{q}:{p}/")
    assert check_socket_path(f"{q}/sv/vault.sock", uids={0}) == [q, p]


def test_symlinks_are_followed_and_a_loop_ends(base: str) -> None:
    p = _dir(f"{base}/p", 0o777)
    os.symlink(p, f"{base}/link")
    with pytest.raises(UnsafeSocketPath, match=f"the directory {p} "):
        check_socket_path(f"{base}/link/vault.sock", uids={0})
    os.symlink(f"{base}/b", f"{base}/a")
    os.symlink(f"{base}/a", f"{base}/b")
    # each directory is looked at once; the connect then fails with ELOOP
    assert check_socket_path(f"{base}/a/vault.sock", uids={0}) == []


def test_a_client_below_a_trusted_shared_directory(base: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes: the emptyDir is 2777, the server's app/ directory in it; the
    application (another uid) trusts the emptyDir by name."""
    shared = _dir(f"{base}/shared", 0o2777)
    app = _dir(f"{shared}/app", 0o710, NOBODY)
    with pytest.raises(UnsafeSocketPath, match="where any user could have made it") as e:
        check_socket_path(f"{app}/vault.sock", uids={0}, foreign_socket_dir=True)
    assert e.value.fix.startswith(f"'chmod go-w {shared}'")
    assert e.value.fix.endswith(f"{TRUST_ENV}={shared}")
    monkeypatch.setenv(TRUST_ENV, shared)
    assert check_socket_path(f"{app}/vault.sock", uids={0},
                             foreign_socket_dir=True) == [shared]


def test_a_relative_link_is_followed_from_where_the_kernel_finds_it(base: str) -> None:
    """``a`` links to ``x/y``, and ``a/sv`` is the relative link ``../z``: the
    kernel reaches ``x/z`` (``..`` of ``x/y``), not ``base/z`` (``..`` of the
    link's spelled parent ``a``).  ``x/z`` is writable by anyone: refused."""
    x = _dir(f"{base}/x", 0o755)
    y = _dir(f"{x}/y", 0o755)
    z = _dir(f"{x}/z", 0o777)
    os.symlink(y, f"{base}/a")
    os.symlink("../z", f"{y}/sv")
    assert os.path.realpath(f"{base}/a/sv") == z
    with pytest.raises(UnsafeSocketPath, match=f"the directory {z} "):
        check_socket_path(f"{base}/a/sv/vault.sock", uids={0})
