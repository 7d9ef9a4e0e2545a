"""A socket cannot be swapped through a directory above it (issue 13, item 3).

With the socket at ``P/sv/vault.sock`` and ``P`` writable by another user,
that user could rename ``sv`` and put a server of their own in its place;
the owner's client would then send it the method, the key name and the
message.  Every directory from the socket's up to ``/`` must belong to root
or the server's user and admit no other writer (unless sticky): the server
refuses to start on such a path, naming the directory and the fix, and the
client refuses to connect through one.  Real directory trees, real servers,
the real command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from secretvault.api.errors import UnsafeSocketPath
from secretvault.api.socketpath import TRUST_ENV
from secretvault.clients import VaultClient
from tests.integration._support import REPO, SERVER_BACKEND, cleanup, short_dir, start

pytestmark = pytest.mark.root

NOBODY = 65534


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


def _shared(base: str, mode: int = 0o777, owner: int = 0) -> str:
    """``base/P``: a directory another user may write (or owns)."""
    p = os.path.join(base, "P")
    os.mkdir(p)
    os.chown(p, owner, owner)
    os.chmod(p, mode)
    return p


def _serve(base: str, sock: str, *extra: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """The real command, stopped by its own refusal (or by the timeout)."""
    full = {k: v for k, v in os.environ.items() if k != TRUST_ENV}
    full.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "secretvault", "serve", "--backend", SERVER_BACKEND,
         "--socket", sock, "--data-dir", os.path.join(base, "data"), *extra],
        capture_output=True, text=True, env=full, cwd=str(REPO), timeout=60)


@pytest.mark.parametrize("mode,owner", [(0o777, 0), (0o775, 0), (0o755, NOBODY)],
                         ids=["world-writable", "group-writable", "another-users"])
def test_the_server_refuses_a_socket_below_a_directory_others_can_change(
        base: str, mode: int, owner: int) -> None:
    p = _shared(base, mode, owner)
    sock = os.path.join(p, "sv", "vault.sock")
    with pytest.raises(UnsafeSocketPath) as e:
        start(base, vault={"socket": sock})
    assert f"the directory {p} " in str(e.value)
    assert not os.path.exists(os.path.join(p, "sv"))  # nothing made below it
    # the command: one line, naming the directory and the fix
    run = _serve(base, sock)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("secretvault: error: UnsafeSocketPath: ")
    assert p in lines[0] and "(fix: " in lines[0] and "Traceback" not in run.stderr


def test_a_policy_listener_below_a_writable_directory_is_refused(base: str) -> None:
    p = _shared(base)
    policy = os.path.join(base, "policy.toml")
    with open(policy, "w") as f:
        f.write(f'[identities.ci]\n[[identities.ci.sockets]]\npath = "{p}/ci/vault.sock"\n')
    with pytest.raises(UnsafeSocketPath, match=f"the directory {p} "):
        start(base, policy_file=policy)


def test_a_symlink_into_a_writable_directory_is_followed(base: str) -> None:
    p = _shared(base)
    link = os.path.join(base, "link")
    os.symlink(p, link)
    sock = os.path.join(link, "sv", "vault.sock")
    with pytest.raises(UnsafeSocketPath, match=f"the directory {p} "):
        start(base, vault={"socket": sock})
    with pytest.raises(UnsafeSocketPath, match=f"the directory {p} "):
        VaultClient(sock)


def test_the_client_refuses_a_swappable_path_and_the_swap_is_caught(base: str) -> None:
    """The attack itself: the vault serves safely, then ``P`` opens to others."""
    p = _shared(base, 0o755)
    sock = os.path.join(p, "sv", "vault.sock")
    with start(base, vault={"socket": sock}):
        with VaultClient(sock) as client:
            client.create_key("k", "ed25519")  # a safe path works
        os.chmod(p, 0o777)
        with pytest.raises(UnsafeSocketPath, match=f"the directory {p} "):
            VaultClient(sock)
        # what the other user then does: their own directory in its place
        os.rename(os.path.join(p, "sv"), os.path.join(p, "old"))
        os.mkdir(os.path.join(p, "sv"), 0o700)
        os.chown(os.path.join(p, "sv"), NOBODY, NOBODY)
        with pytest.raises(UnsafeSocketPath, match=fr"lies in {p} \(mode 0777\), where any "
                                                   "user could have made it"):
            VaultClient(sock)
        # the command says so in one line
        env = {k: v for k, v in os.environ.items() if k != TRUST_ENV}
        env["PYTHONPATH"] = str(REPO)
        cli = subprocess.run([sys.executable, "-m", "secretvault", "--socket", sock,
                              "keys", "list"], capture_output=True, text=True, env=env,
                             cwd=str(REPO), timeout=60)
        lines = cli.stderr.strip().splitlines()
        assert cli.returncode == 2 and len(lines) == 1, cli.stderr
        assert lines[0].startswith("secretvault: error: UnsafeSocketPath: ") and p in lines[0]
        assert f"{TRUST_ENV}={p}" in lines[0]


def test_sticky_directories_protect_what_their_trusted_users_made(base: str) -> None:
    """/tmp/sv-XXXX (every other test's socket) is the sticky case: accepted."""
    p = _shared(base, 0o1777)
    sock = os.path.join(p, "sv", "vault.sock")
    with start(base, vault={"socket": sock}):
        with VaultClient(sock) as client:
            assert client.list_keys() == []
    # a socket directory of another user in a sticky directory: anyone could
    # have made it first, so a client does not trust it
    other = os.path.join(p, "theirs")
    os.mkdir(other, 0o755)
    os.chown(other, NOBODY, NOBODY)
    with pytest.raises(UnsafeSocketPath, match="any user could have made it"):
        VaultClient(os.path.join(other, "vault.sock"))


def test_a_named_directory_is_trusted_knowingly(base: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume private to its pod (a Kubernetes emptyDir is 0777): accepted when
    named in $SECRETVAULT_TRUST_SOCKET_DIRS, with a warning at start."""
    p = _shared(base)
    sock = os.path.join(p, "sv", "vault.sock")
    monkeypatch.setenv(TRUST_ENV, f"/nonexistent:{p}")
    with start(base, vault={"socket": sock}):
        with VaultClient(sock) as client:
            assert client.list_keys() == []
