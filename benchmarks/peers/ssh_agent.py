"""OpenSSH's ssh-agent as a signing peer, driven over its Unix socket.

A real ``ssh-agent -D -a SOCK`` (Debian's openssh-client) runs in the
foreground as a child process; an Ed25519 key made by ``ssh-keygen`` is
loaded with ``ssh-add``; :class:`AgentClient` then speaks the agent protocol
itself (draft-miller-ssh-agent) on one connection, so the figure is the
agent's own cost plus one Unix-socket round trip, with no ssh-add or
libssh in the loop.

Wire format: every message is ``uint32 length || byte type || contents``;
``string`` is ``uint32 length || bytes``.

* ``SSH_AGENTC_REQUEST_IDENTITIES`` (11) -> ``SSH_AGENT_IDENTITIES_ANSWER``
  (12): ``uint32 nkeys`` then ``nkeys`` x (``string key blob``, ``string
  comment``);
* ``SSH_AGENTC_SIGN_REQUEST`` (13): ``string key blob, string data,
  uint32 flags`` -> ``SSH_AGENT_SIGN_RESPONSE`` (14): ``string signature``,
  where for Ed25519 the signature is ``string "ssh-ed25519" || string
  sig[64]`` (RFC 8709);
* ``SSH_AGENT_FAILURE`` (5) for anything refused.

The agent is single-threaded (one poll loop): it serves several
connections, but one signature at a time.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from benchmarks._measure import PeerMissing

SSH_AGENT_FAILURE = 5
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENT_IDENTITIES_ANSWER = 12
SSH_AGENTC_SIGN_REQUEST = 13
SSH_AGENT_SIGN_RESPONSE = 14

ED25519_KEY_TYPE = b"ssh-ed25519"

_SETUP_HINT = "run benchmarks/setup-peers (apt-get install openssh-client)"


class AgentProtocolError(Exception):
    """The agent answered with something the protocol does not allow here."""


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_string(buf: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(buf):
        raise AgentProtocolError("truncated string length")
    (n,) = struct.unpack_from(">I", buf, offset)
    end = offset + 4 + n
    if end > len(buf):
        raise AgentProtocolError("truncated string")
    return buf[offset + 4 : end], end


@dataclass(frozen=True)
class Identity:
    blob: bytes  # the public key in SSH wire format
    comment: str

    @property
    def key_type(self) -> bytes:
        return _read_string(self.blob, 0)[0]

    @property
    def ed25519_public(self) -> bytes:
        """The raw 32-byte Ed25519 public key inside the blob."""
        kind, off = _read_string(self.blob, 0)
        if kind != ED25519_KEY_TYPE:
            raise AgentProtocolError(f"not an Ed25519 key: {kind!r}")
        pk, _ = _read_string(self.blob, off)
        if len(pk) != 32:
            raise AgentProtocolError("an Ed25519 public key is 32 bytes")
        return pk


class AgentClient:
    """One connection to an agent socket, speaking the protocol directly."""

    def __init__(self, path: str | Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(os.fspath(path))
        except OSError:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise AgentProtocolError("the agent closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, msg_type: int, contents: bytes = b"") -> tuple[int, bytes]:
        body = bytes([msg_type]) + contents
        self._sock.sendall(struct.pack(">I", len(body)) + body)
        (n,) = struct.unpack(">I", self._recv_exact(4))
        if n == 0 or n > 256 * 1024:
            raise AgentProtocolError(f"implausible reply length {n}")
        reply = self._recv_exact(n)
        return reply[0], reply[1:]

    def identities(self) -> list[Identity]:
        kind, body = self.request(SSH_AGENTC_REQUEST_IDENTITIES)
        if kind != SSH_AGENT_IDENTITIES_ANSWER:
            raise AgentProtocolError(f"expected IDENTITIES_ANSWER, got type {kind}")
        (count,) = struct.unpack_from(">I", body, 0)
        off = 4
        out = []
        for _ in range(count):
            blob, off = _read_string(body, off)
            comment, off = _read_string(body, off)
            out.append(Identity(blob, comment.decode("utf-8", "replace")))
        return out

    def sign(self, key_blob: bytes, data: bytes, flags: int = 0) -> bytes:
        """The raw 64-byte Ed25519 signature of ``data`` by the agent's key."""
        kind, body = self.request(
            SSH_AGENTC_SIGN_REQUEST, _string(key_blob) + _string(data) + struct.pack(">I", flags)
        )
        if kind == SSH_AGENT_FAILURE:
            raise AgentProtocolError("the agent refused to sign")
        if kind != SSH_AGENT_SIGN_RESPONSE:
            raise AgentProtocolError(f"expected SIGN_RESPONSE, got type {kind}")
        sig_blob, _ = _read_string(body, 0)
        sig_type, off = _read_string(sig_blob, 0)
        if sig_type != ED25519_KEY_TYPE:
            raise AgentProtocolError(f"unexpected signature type {sig_type!r}")
        sig, _ = _read_string(sig_blob, off)
        if len(sig) != 64:
            raise AgentProtocolError("an Ed25519 signature is 64 bytes")
        return sig


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PeerMissing(f"{name} not found on PATH (openssh-client); {_SETUP_HINT}")
    return path


class SshAgent:
    """A private ssh-agent holding one fresh Ed25519 key, for one benchmark.

    Everything lives in a temporary directory (mode 0700) removed on close;
    the agent is a child process in the foreground (``-D``), terminated on
    close, so nothing outlives the benchmark.
    """

    def __init__(self) -> None:
        agent, keygen, add = _tool("ssh-agent"), _tool("ssh-keygen"), _tool("ssh-add")
        self._dir = tempfile.TemporaryDirectory(prefix="sv-bench-agent-")
        self.socket_path = Path(self._dir.name) / "agent.sock"
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [agent, "-D", "-a", str(self.socket_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            self._wait_for_socket()
            key = Path(self._dir.name) / "id_ed25519"
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "sv-bench", "-f", str(key)],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            env = dict(os.environ, SSH_AUTH_SOCK=str(self.socket_path))
            subprocess.run(
                [add, "-q", str(key)], check=True, env=env,
                stdin=subprocess.DEVNULL, capture_output=True,
            )
            with AgentClient(self.socket_path) as c:
                ids = [i for i in c.identities() if i.key_type == ED25519_KEY_TYPE]
            if not ids:
                raise PeerMissing("ssh-add reported success but the agent lists no Ed25519 key")
            self.identity = ids[0]
        except BaseException:
            self.close()
            raise

    def _wait_for_socket(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise PeerMissing(f"ssh-agent exited with {self._proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                raise PeerMissing("ssh-agent did not create its socket within 10 s")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def version(self) -> str:
        out = subprocess.run(
            [_tool("ssh"), "-V"], capture_output=True, text=True, check=False
        )
        return (out.stderr or out.stdout).strip()

    def client(self) -> AgentClient:
        return AgentClient(self.socket_path)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        self._dir.cleanup()

    def __enter__(self) -> SshAgent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
