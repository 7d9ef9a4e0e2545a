"""One store, two ways in: the server and an application embedding the keyring.

Real processes on a real store: ``secretvault serve`` (:class:`Child`) and
``tests/integration/embedding_app.py``, an application that opens the
keyring through ``secretvault.embedded`` only, both on the lane's backend.
A store one of them made opens in the other with the same unseal key file,
and both may serve it at once, each following the other's changes through
the store's change feed; only sole-access work (a first start) refuses the
other with one clear line naming the holder.  The
embedding process is hardened exactly as the server is (not dumpable, no
core dumps), checked in that process itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from secretvault.clients import KeyNotFound, VaultClient, local
from secretvault.embedded import open_keyring
from secretvault.vault import app
from secretvault.vault.storelock import StoreLock
from tests.integration._support import REPO, SERVER_BACKEND, Child, cleanup, short_dir

APP = "tests.integration.embedding_app"


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    try:
        yield d
    finally:
        cleanup(d)


class App:
    """The embedding application in a child process, holding the store until :meth:`stop`."""

    def __init__(self, data_dir: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("SECRETVAULT_PASSPHRASE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", APP, data_dir, SERVER_BACKEND], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the application died (exit {self.proc.wait(timeout=10)})"
        self.report: dict[str, object] = json.loads(line)

    def stop(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert json.loads(self.proc.stdout.readline()) == {"closed": True}
        assert self.proc.wait(timeout=30) == 0

    def keys(self) -> list[str]:
        """The keys the application sees now."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("list\n")
        self.proc.stdin.flush()
        keys: list[str] = json.loads(self.proc.stdout.readline())["keys"]
        return keys

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def _serve(base: str) -> Child:
    server = Child(base)
    server.wait_ready()
    return server


def _stop(server: Child) -> None:
    server.terminate()
    assert server.proc.wait(timeout=30) == 0, server.stderr()
    server.close()


def test_a_store_moves_between_the_server_and_an_application(base: str) -> None:
    data = os.path.join(base, "data")
    server = _serve(base)
    try:
        with VaultClient(server.socket) as c:
            c.create_key("served/signer", "ed25519")
            c.create_key("served/aead", "xchacha20-poly1305")
            served_signature = c.sign("served/signer", b"from the server")
            served_ciphertext = c.encrypt("served/aead", b"sealed by the server")
            served_public = c.public_key("served/signer").raw
    finally:
        _stop(server)

    # the server's store, with the unseal key file it made, opens embedded
    application = App(data)
    try:
        report = application.report
        assert "served/signer" in report["keys"]  # type: ignore[operator]
        app_signature = bytes.fromhex(str(report["signature"]))
    finally:
        application.stop()
    # and in this process too, where every call can be checked
    # (hardening skipped here only: it would outlive the test, see the last test)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app, "harden_process", lambda: None)
        with open_keyring(data, unseal_key_file=os.path.join(data, "unseal.key"),
                          backend=SERVER_BACKEND) as ring:  # type: ignore[arg-type]
            assert ring.verify("served/signer", b"from the server", served_signature)
            assert ring.decrypt("served/aead", served_ciphertext) == b"sealed by the server"
            assert ring.public_key("served/signer").raw == served_public
            assert ring.rotate_key("served/signer").primary_version == 2
            ring.delete_key("served/aead")
            embedded_signature = ring.sign("served/signer", b"from the keyring")

    # and back: the server serves what the applications made and changed
    server = _serve(base)
    try:
        with VaultClient(server.socket) as c:
            assert c.verify("app/signer", b"from the application", app_signature)
            assert c.get_key("served/signer").primary_version == 2
            assert c.verify("served/signer", b"from the keyring", embedded_signature)
            assert local.signature_payload(embedded_signature)[0] == 2
            with pytest.raises(KeyNotFound):
                c.get_key("served/aead")
    finally:
        _stop(server)


def test_the_server_and_an_application_share_a_store(base: str) -> None:
    """Contract change (the change feed): the server no longer refuses a store an
    application holds; both serve it, and each serves what the other created."""
    data = os.path.join(base, "data")
    application = App(data)
    try:
        server = _serve(base)
        try:
            with VaultClient(server.socket) as c:
                assert c.get_key("app/signer").type == "ed25519"
                c.create_key("served/while-shared", "hmac-sha256")
            deadline = time.monotonic() + 1.0
            while "served/while-shared" not in application.keys():
                assert time.monotonic() < deadline, "the application did not follow in 1 s"
                time.sleep(0.01)
        finally:
            _stop(server)
    finally:
        application.stop()


def test_a_first_start_refuses_with_one_line_naming_the_holder(base: str) -> None:
    """What still needs the store alone (a first start: the key file and the
    metadata) is refused while another holds it, in one line naming the holder."""
    data = os.path.join(base, "data")
    os.makedirs(data, mode=0o700)
    holder = StoreLock(os.path.join(data, app.STORE_FILE_NAME), "a migration in this test")
    try:
        server = Child(base)
        try:
            assert server.proc.wait(timeout=60) == 2
            lines = server.stderr().strip().splitlines()
        finally:
            server.close()
    finally:
        holder.release()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("secretvault: error: ") and "(fix: " in line, line
    assert "StoreInUse" in line and "needs it alone" in line, line
    assert f"pid {os.getpid()}: a migration in this test" in line, line
    # let go: the server starts on it now
    _stop(_serve(base))


def test_the_application_is_hardened_like_the_server(base: str) -> None:
    application = App(os.path.join(base, "data"))
    try:
        report = application.report
    finally:
        application.stop()
    before, after = report["before"], report["after"]
    assert before == {"dumpable": 1, "core": before["core"]}  # type: ignore[index]
    assert after == {"dumpable": 0, "core": [0, 0]}, after
    assert report["stats_backend"] == SERVER_BACKEND


@pytest.mark.memfd_secret  # the example takes the default backend, as a reader would
def test_the_readmes_example_runs_and_finds_its_key_again(base: str) -> None:
    """README.md's example, as it stands, in a process of its own: twice, so
    the second run opens the store the first made and signs with the same key."""
    import re

    readme = (REPO / "README.md").read_text()
    section = re.search(r"^## Embedded: .*?\n(.*?)(?=^## )", readme, re.M | re.S)
    assert section, "README.md has no '## Embedded: ...' section"
    (example,) = re.findall(r"^```python\n(.*?)^```", section.group(1), re.M | re.S)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SECRETVAULT_PASSPHRASE", None)
    printed = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", example], cwd=base, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        printed.append(p.stdout)
    assert printed[0].startswith("ssh-ed25519 ") and printed[0] == printed[1]
    assert os.path.exists(os.path.join(base, "app-keys", "unseal.key"))
