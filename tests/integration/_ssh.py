"""Real OpenSSH tools against an agent socket: ssh-add, ssh-keygen, ssh, sshd, git.

Each helper runs the real program (Debian's openssh-client, openssh-server,
git: ``scripts/install-ssh-deps``) with ``SSH_AUTH_SOCK`` pointing at the
socket under test.  A test that needs a missing program is skipped, naming it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "run scripts/install-ssh-deps (openssh-client, openssh-server, git)"


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if path is None:
        pytest.skip(f"{name} is not installed here: {INSTALL}")
    return path


def run(args: list[str], sock: str, *, stdin: str | None = None, env: dict[str, str] | None = None,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, SSH_AUTH_SOCK=sock, **(env or {}))
    out = subprocess.run([tool(args[0]), *args[1:]], env=full, input=stdin,
                         capture_output=True, text=True, timeout=60, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} exited {out.returncode}: {out.stdout} {out.stderr}")
    return out


def keygen(path: Path, comment: str = "me@test") -> str:
    """A new Ed25519 key made by ssh-keygen at ``path``; its public line."""
    subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, capture_output=True)
    return Path(f"{path}.pub").read_text().strip()


def askpass(directory: Path, passphrase: str) -> dict[str, str]:
    """The environment that makes ssh-add read ``passphrase`` from an askpass program."""
    script = directory / f"askpass-{abs(hash(passphrase))}"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{passphrase}'\n")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    """A real sshd on 127.0.0.1 (a high port), with its own host key and config."""

    directory: Path
    authorized_keys: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        sshd = tool("sshd")
        self.host_key = self.directory / "host_ed25519"
        self.host_public = keygen(self.host_key, "host")
        (self.directory / "authorized_keys").write_text(self.authorized_keys)
        self.port = free_port()
        config = self.directory / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "StrictModes no", "UsePAM no",
            "PermitRootLogin yes", "PidFile none", "LogLevel VERBOSE", ""]))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege-separation dir
        self.log = self.directory / "sshd.log"
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)],
                                     stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"sshd did not listen: {self.log.read_text()}")

    def known_hosts(self) -> Path:
        path = self.directory / "known_hosts"
        kind, blob = self.host_public.split()[:2]
        path.write_text(f"[127.0.0.1]:{self.port} {kind} {blob}\n")
        return path

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._log.close()


class OpenSshAgent:
    """OpenSSH's own ssh-agent on a socket of its own: the reference behaviour."""

    def __init__(self, directory: Path) -> None:
        self.socket = str(directory / "openssh-agent.sock")
        self.proc = subprocess.Popen([tool("ssh-agent"), "-D", "-a", self.socket],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("ssh-agent did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
