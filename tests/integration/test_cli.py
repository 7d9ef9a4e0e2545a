"""The ``secretvault`` command: help, usage errors, every subcommand against a
real server, ``serve`` itself, and the rule that a user mistake gets one line
naming the problem and the fix — never a traceback."""

from __future__ import annotations

import argparse
import base64
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secretvault.vault.cli import main
from secretvault.vault.cli.parser import build_parser
from secretvault.vault.cli.serve import server_config
from secretvault.vault.server import VaultServer
from tests.integration._support import (
    REPO,
    SERVER_BACKEND,
    SERVER_PROTECTION,
    Pki,
    cleanup,
    short_dir,
    start,
)

#: fast Argon2id for stores opened with a passphrase (the production default is 64 MiB)
FAST_KDF = ["--argon2-ops", "1", "--argon2-mem", str(8 << 20)]


def command() -> list[str]:
    """The installed entry point if this venv has it, else the module."""
    script = Path(sys.executable).with_name("secretvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "secretvault"]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("SECRETVAULT_SOCKET", "SECRETVAULT_PASSPHRASE")}
    e["PYTHONPATH"] = str(REPO)
    e.update(extra)
    return e


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


def sv_proc(*args: str, input: bytes | None = None, environ: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """The installed command in a child process (exit status, streams, no traceback)."""
    return subprocess.run([*command(), *args], input=input, capture_output=True,
                          env=environ or env(), timeout=timeout, check=False)


def sv(*args: str, input: bytes | None = None, environ: dict[str, str] | None = None) -> Ran:
    """``main`` in this process, with its own stdin, stdout, stderr and environment.

    Much cheaper than a child process on a loaded machine; the child-process
    tests below check the same rules end to end.
    """
    saved = sys.stdin, sys.stdout, sys.stderr
    saved_env = dict(os.environ)
    out, err = io.BytesIO(), io.BytesIO()
    wrappers = (io.TextIOWrapper(io.BytesIO(input or b"")),
                io.TextIOWrapper(out, write_through=True),
                io.TextIOWrapper(err, write_through=True))
    sys.stdin, sys.stdout, sys.stderr = wrappers
    os.environ.clear()
    os.environ.update(environ or env())
    try:
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        os.environ.clear()
        os.environ.update(saved_env)
        for w in wrappers:
            w.flush()
            w.detach()  # keep the BytesIO open when the wrapper is collected
    return Ran(code, out.getvalue(), err.getvalue())


def one_line_error(p: Ran | subprocess.CompletedProcess[bytes], *parts: str) -> str:
    """The run failed with exit 2 and exactly one stderr line naming problem and fix."""
    err = p.stderr.decode()
    assert p.returncode == 2, (p.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("secretvault: error: ") and "(fix: " in line, line
    for part in parts:
        assert part in line, (part, line)
    return line


@pytest.fixture(scope="module")
def server() -> Iterator[VaultServer]:
    base = short_dir()
    try:
        with start(base) as s:
            yield s
    finally:
        cleanup(base)


@pytest.fixture
def work(tmp_path: Path, server: VaultServer) -> Iterator[tuple[Path, dict[str, str]]]:
    yield tmp_path, env(SECRETVAULT_SOCKET=server.config.vault.socket)


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


# --- help and usage -------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[list[str], Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield [name], sub
                for path, deeper in _subparsers(sub):
                    yield [name, *path], deeper


ALL = [path for path, _ in _subparsers(build_parser())]


def test_every_subcommand_named_in_the_issue_exists() -> None:
    names = {" ".join(p) for p in ALL}
    for want in ("serve", "keys create", "keys list", "keys show", "keys rotate", "keys delete",
                 "keys public", "keys import", "sign", "verify", "encrypt", "decrypt", "mac",
                 "verify-mac", "stats", "model compare"):
        assert want in names


def test_help_is_complete() -> None:
    for path, parser in [([], build_parser()), *_subparsers(build_parser())]:
        if path[:2] == ["model", "compare"]:
            continue  # secretvault.backends.model.report owns those options
        assert parser.description, path
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            assert action.help, (path, action.dest)
        if path and path[0] not in ("serve", "keys", "model"):
            assert any("--socket" in a.option_strings for a in parser._actions), path
        if path[:1] == ["keys"] and len(path) == 2:
            assert any("--socket" in a.option_strings for a in parser._actions), path


@pytest.mark.parametrize("path", [[], *ALL], ids=lambda p: " ".join(p) or "secretvault")
def test_help_exits_zero(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: secretvault")
    if path in (["sign"], ["verify"], ["keys", "create"], ["stats"]):
        assert "--socket PATH" in out and "--json" in out


def test_top_level_help_lists_everything_and_the_exit_statuses() -> None:
    p = sv_proc("--help")
    out = p.stdout.decode()
    assert p.returncode == 0
    for name in ("serve", "keys", "sign", "verify", "encrypt", "decrypt", "mac", "verify-mac",
                 "stats", "model", "exit status"):
        assert name in out


@pytest.mark.parametrize("args,problem", [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["keys", "create", "k"], "--type"),
    (["keys", "create", "k", "--type", "rsa"], "invalid choice: 'rsa'"),
    (["keys", "delete", "k", "--version", "0"], "must be 1 or more"),
    (["verify", "k"], "--signature"),
    (["sign", "k", "--timeout", "-3"], "must be positive"),
    (["stats", "--interval", "soon"], "not a number"),
    (["sign", "k", "--socket", "a", "--connect", "h:1"], "not allowed with"),
    (["keys", "public", "k", "--format", "der"], "invalid choice: 'der'"),
    (["serve", "--backend", "ramdisk"], "invalid choice: 'ramdisk'"),
    (["serve", "--passphrase-file", "a", "--unseal-key-file", "b"], "not allowed with"),
])
def test_bad_arguments_are_usage_errors(args: list[str], problem: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    usage, error = err.strip().splitlines()[0], err.strip().splitlines()[-1]
    assert usage.startswith("usage: secretvault")
    assert error.startswith("secretvault") and "error:" in error and problem in error
    assert "(fix: see 'secretvault" in error


def test_usage_error_from_the_real_command_has_no_traceback() -> None:
    p = sv_proc("keys", "create", "k", "--type", "rsa")
    assert p.returncode == 2 and b"Traceback" not in p.stderr and b"usage:" in p.stderr


# --- the commands against a real server ------------------------------------------------------


def test_sign_verify_and_openssl(work: tuple[Path, dict[str, str]]) -> None:
    d, e = work
    name = unique("ci/release")
    p = sv("keys", "create", name, "--type", "ed25519", "--label", "team=ci", environ=e)
    assert p.returncode == 0 and p.stdout.decode() == f"created ed25519 key '{name}', version 1\n"
    (d / "msg").write_bytes(b"artifact digest\n")

    # token to a file, verify from files
    assert sv("sign", name, "--in", str(d / "msg"), "--out", str(d / "msg.tok"),
              environ=e).returncode == 0
    assert (d / "msg.tok").read_bytes()[:3] == b"SVS"
    p = sv("verify", name, "--in", str(d / "msg"), "--signature", str(d / "msg.tok"), environ=e)
    assert p.returncode == 0 and b"valid" in p.stdout

    # stdin in, stdout out, raw; openssl verifies with the exported PEM
    p = sv_proc("sign", name, "--raw", input=b"artifact digest\n", environ=e)
    assert p.returncode == 0 and len(p.stdout) == 64 and not p.stderr
    (d / "msg.sig").write_bytes(p.stdout)
    assert sv("keys", "public", name, "--format", "pem", "--out", str(d / "pub.pem"),
              environ=e).returncode == 0
    o = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(d / "pub.pem"),
                        "-rawin", "-in", str(d / "msg"), "-sigfile", str(d / "msg.sig")],
                       capture_output=True, check=False)
    assert o.returncode == 0 and b"Signature Verified Successfully" in o.stdout

    # a raw signature verifies too (framed with the primary version); mismatch: exit 1
    p = sv("verify", name, "--signature", str(d / "msg.sig"), "--in", str(d / "msg"), environ=e)
    assert p.returncode == 0
    p = sv_proc("verify", name, "--signature", str(d / "msg.tok"), input=b"tampered",
                environ=e)
    assert p.returncode == 1 and b"INVALID" in p.stderr and b"Traceback" not in p.stderr
    p = sv("verify", name, "--signature", str(d / "msg.tok"), "--in", str(d / "msg"), "--json",
           environ=e)
    assert json.loads(p.stdout) == {"key": name, "valid": True, "version": 1}

    # --json sign
    p = sv("sign", name, "--json", input=b"x", environ=e)
    doc = json.loads(p.stdout)
    assert doc["version"] == 1 and len(base64.b64decode(doc["raw_signature"])) == 64
    assert base64.b64decode(doc["signature"])[7:] == base64.b64decode(doc["raw_signature"])


def test_public_key_formats(work: tuple[Path, dict[str, str]]) -> None:
    d, e = work
    name = unique("pub")
    sv("keys", "create", name, "--type", "ed25519", environ=e)
    assert sv("keys", "public", name, "--format", "openssh",
              environ=e).stdout.startswith(b"ssh-ed25519 ")
    jwk = json.loads(sv("keys", "public", name, "--format", "jwk", environ=e).stdout)
    assert jwk["kty"] == "OKP" and jwk["kid"] == f"{name}#1"
    assert sv("keys", "public", name, "--format", "raw", "--out", str(d / "raw"),
              environ=e).returncode == 0
    assert len((d / "raw").read_bytes()) == 32
    doc = json.loads(sv("keys", "public", name, "--json", "--format", "raw", environ=e).stdout)
    assert base64.b64decode(doc["public_key"]) == (d / "raw").read_bytes()


def test_key_management(work: tuple[Path, dict[str, str]]) -> None:
    _, e = work
    name = unique("mgmt/hm")
    sv("keys", "create", name, "--type", "hmac-sha256", environ=e)
    p = sv("keys", "list", "--prefix", "mgmt/", environ=e)
    assert p.returncode == 0 and name.encode() in p.stdout and b"hmac-sha256" in p.stdout
    assert sv("keys", "rotate", name, environ=e).stdout.endswith(b"primary version is now 2\n")
    shown = json.loads(sv("keys", "show", name, "--json", environ=e).stdout)
    assert shown["primary_version"] == 2 and [v["version"] for v in shown["versions"]] == [1, 2]
    p = sv("keys", "show", name, environ=e)
    assert b"primary version         2" in p.stdout
    assert sv("keys", "set-min-version", name, "2", environ=e).returncode == 0
    assert sv("keys", "delete", name, "--version", "1", environ=e).returncode == 0
    one_line_error(sv("keys", "delete", name, "--version", "2", environ=e),
                   "FailedPrecondition", "rotate")
    assert sv("keys", "delete", name, environ=e).returncode == 0
    one_line_error(sv("keys", "show", name, environ=e), "KeyNotFound", "keys list")
    listed = json.loads(sv("keys", "list", "--json", "--prefix", "mgmt/", environ=e).stdout)
    assert name not in [k["name"] for k in listed]


def test_encrypt_decrypt_and_mac(work: tuple[Path, dict[str, str]]) -> None:
    d, e = work
    aead, box, hm = unique("aead"), unique("box"), unique("hm")
    for n, t in ((aead, "xchacha20-poly1305"), (box, "x25519"), (hm, "hmac-sha256")):
        assert sv("keys", "create", n, "--type", t, environ=e).returncode == 0
    ct = sv("encrypt", aead, "--aad", "ctx", input=b"plain", environ=e)
    assert ct.returncode == 0 and ct.stdout[:3] == b"SVA"
    p = sv("decrypt", aead, "--aad", "ctx", input=ct.stdout, environ=e)
    assert p.stdout == b"plain"
    one_line_error(sv("decrypt", aead, input=ct.stdout, environ=e), "DecryptionFailed", "--aad")

    # x25519: sealed locally to the public key, opened by the vault
    sealed = sv("encrypt", box, "--out", str(d / "b.tok"), input=b"to the vault", environ=e)
    assert sealed.returncode == 0 and (d / "b.tok").read_bytes()[:3] == b"SVB"
    assert sv("decrypt", box, "--in", str(d / "b.tok"), environ=e).stdout == b"to the vault"
    one_line_error(sv("encrypt", box, "--aad", "x", input=b"m", environ=e), "associated data")
    doc = json.loads(sv("decrypt", box, "--in", str(d / "b.tok"), "--json", environ=e).stdout)
    assert base64.b64decode(doc["plaintext"]) == b"to the vault" and doc["version"] == 1

    mac = sv("mac", hm, "--out", str(d / "m.tok"), input=b"payload", environ=e)
    assert mac.returncode == 0
    assert sv("verify-mac", hm, "--mac", str(d / "m.tok"), input=b"payload",
              environ=e).returncode == 0
    assert sv("verify-mac", hm, "--mac", str(d / "m.tok"), input=b"payload!",
              environ=e).returncode == 1
    raw = sv("mac", hm, "--raw", input=b"payload", environ=e).stdout
    assert len(raw) == 32 and raw == (d / "m.tok").read_bytes()[7:]
    one_line_error(sv("mac", aead, input=b"m", environ=e), "WrongKeyType", "hmac-sha256")


def test_import_an_openssl_key(work: tuple[Path, dict[str, str]]) -> None:
    d, e = work
    name = unique("imported")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(d / "k.pem")],
                   check=True, capture_output=True)
    p = sv("keys", "import", name, "--type", "ed25519", "--from", str(d / "k.pem"), environ=e)
    assert p.returncode == 0 and b"imported ed25519 key" in p.stdout
    subprocess.run(["openssl", "pkey", "-in", str(d / "k.pem"), "-pubout", "-out",
                    str(d / "k.pub")], check=True, capture_output=True)
    assert sv("keys", "public", name, environ=e).stdout == (d / "k.pub").read_bytes()
    (d / "short").write_bytes(b"x" * 10)
    one_line_error(sv("keys", "import", unique("bad"), "--type", "ed25519", "--from",
                      str(d / "short"), environ=e), "InvalidImport", "keys import --help")
    one_line_error(sv("keys", "import", unique("bad"), "--type", "ed25519", "--from",
                      str(d / "missing"), environ=e), "cannot read the key file")


def test_stats_table_json_and_watch(work: tuple[Path, dict[str, str]]) -> None:
    _, e = work
    p = sv("stats", environ=e)
    out = p.stdout.decode()
    assert p.returncode == 0
    for section in (f"backend {SERVER_BACKEND}, protection {SERVER_PROTECTION}", "Secret memory",
                    "Memlock (RLIMIT_MEMLOCK)", "headroom in keys", "Direct map",
                    "level-2 splits", "DirectMap4k", "hibernation inhibited",
                    "Quotas (versions per key: 100)"):
        assert section in out, section
    assert [line for line in out.splitlines() if line != line.rstrip()] == []  # piped
    assert re.search(r"\nowner +[\d.]+ [KMG]?i?B +unlimited", out), out
    doc = json.loads(sv("stats", "--json", environ=e).stdout)
    assert doc["backend"] == SERVER_BACKEND and "memlock" in doc and "direct_map" in doc
    assert isinstance(doc["bytes_locked"], int) and isinstance(doc["key_bytes"], int)
    assert doc["max_versions_per_key"] == 100
    assert [q["identity"] for q in doc["identity_quotas"]] == ["owner"]

    watch = subprocess.Popen([*command(), "stats", "--watch", "--json", "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    try:
        assert watch.stdout is not None
        lines = [json.loads(watch.stdout.readline()) for _ in range(3)]
        assert all(x["protection"] == SERVER_PROTECTION for x in lines)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
        assert watch.stderr is not None and b"Traceback" not in watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()


def test_stats_watch_table_refreshes_on_a_terminal(server: VaultServer) -> None:
    """On a terminal, --watch redraws the table in place until Ctrl-C."""
    controller, terminal = pty.openpty()
    # a 50x140 terminal: the whole table fits, so each refresh redraws all of it
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 140, 0, 0))
    watch = subprocess.Popen([*command(), "--socket", server.config.vault.socket, "stats",
                              "--watch", "--interval", "0.2"],
                             stdin=terminal, stdout=terminal, stderr=terminal, env=env())
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while seen.count(b"Direct map") < 3 and time.monotonic() < deadline:
            try:
                seen += os.read(controller, 65536)
            except OSError:
                break
        assert seen.count(b"Direct map") >= 3  # drawn, then redrawn
        assert b"\x1b[" in seen  # cursor movement: redrawn in place, not appended
        watch.send_signal(signal.SIGINT)
        # the terminal is read until the watch exits: its last redraws must not
        # fill the pty's buffer and leave it blocked in write(2)
        deadline = time.monotonic() + 10
        while watch.poll() is None and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                try:
                    seen += os.read(controller, 65536)
                except OSError:
                    break
        assert watch.wait(timeout=1) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        os.close(controller)
    assert b"Traceback" not in seen


def test_binary_output_is_not_written_to_a_terminal(server: VaultServer) -> None:
    env_ = env(SECRETVAULT_SOCKET=server.config.vault.socket)
    name = unique("tty")
    sv("keys", "create", name, "--type", "ed25519", environ=env_)
    controller, terminal = pty.openpty()
    try:
        p = subprocess.run([*command(), "sign", name], input=b"m", stdout=terminal,
                           stderr=subprocess.PIPE, env=env_, timeout=60, check=False)
        assert p.returncode == 2
        line = p.stderr.decode().strip()
        assert "refusing to write the binary signature to the terminal" in line
        assert "--out FILE" in line and "Traceback" not in line
    finally:
        os.close(terminal)
        os.close(controller)


def test_errors_are_one_line_with_a_fix(work: tuple[Path, dict[str, str]]) -> None:
    d, e = work
    one_line_error(sv("sign", "no-such-key", input=b"m", environ=e), "KeyNotFound",
                   "keys create NAME --type TYPE")
    one_line_error(sv("keys", "create", "../bad", "--type", "ed25519", environ=e),
                   "InvalidKeyName")
    one_line_error(sv("sign", "k", "--in", str(d / "missing"), environ=e),
                   "cannot read the message", "check the path")
    one_line_error(sv("verify", "k", "--signature", "-", environ=e), "both come from stdin")
    one_line_error(sv("keys", "create", "x", "--type", "ed25519", "--label", "novalue",
                      environ=e), "KEY=VALUE")
    one_line_error(sv("sign", "k", "--connect", "localhost:1", input=b"m", environ=e),
                   "--ca-cert")


def test_unreachable_vault(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.sock")
    line = one_line_error(sv_proc("keys", "list", "--socket", gone), "ConnectionFailed", gone,
                          "secretvault serve")
    assert "failed to connect to all addresses" not in line  # grpc's jargon stays out
    (tmp_path / "file").write_text("")
    one_line_error(sv("stats", "--socket", str(tmp_path / "file")), "is not a socket")
    # SECRETVAULT_SOCKET and the global --socket are both honoured
    one_line_error(sv("keys", "list", environ=env(SECRETVAULT_SOCKET=gone)), gone)
    one_line_error(sv("--socket", gone, "keys", "list"), gone)


def test_global_socket_option(server: VaultServer) -> None:
    p = sv("--socket", server.config.vault.socket, "stats", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["backend"] == SERVER_BACKEND


def test_model_compare_is_wired() -> None:
    p = sv("model", "compare", "--scenario", "keyring", "--keys", "2000", "--json")
    assert p.returncode == 0, p.stderr
    models = {r["model"] for r in json.loads(p.stdout)}
    assert {"page-model", "pooled-pmd-model", "pmd-buddy-model"} <= models


# --- serve -----------------------------------------------------------------------------------


class Serve:
    """``secretvault serve`` in a child process, stderr to a file."""

    def __init__(self, base: str, *args: str, environ: dict[str, str] | None = None) -> None:
        self.base = base
        self.socket = os.path.join(base, "run", "vault.sock")
        self.data = os.path.join(base, "data")
        self.err_path = os.path.join(base, f"serve-{time.monotonic_ns()}.err")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            [*command(), "serve", "--socket", self.socket, "--data-dir", self.data,
             "--audit-log", os.path.join(base, "audit.log"), "--grace", "1",
             "--backend", SERVER_BACKEND, *args],  # a test's own --backend wins
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
            env=environ or env(),
        )

    def stderr(self) -> str:
        return Path(self.err_path).read_text(errors="replace")

    def ready(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr()
            if "secretvault is serving" in text and "listening" in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {text}")
            time.sleep(0.05)
        raise AssertionError(f"serve not ready: {self.stderr()}")

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._err.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


@pytest.mark.memfd_secret
def test_serve_first_start_summary_and_unseal_key_file(base: str) -> None:
    s = Serve(base)
    try:
        text = s.ready()
        key_file = os.path.join(s.data, "unseal.key")
        for line in ("backend      memfd_secret: keys live in secret memory",
                     "memlock      ", "headroom     ", f"store        {s.data}/keys.sqlite3",
                     f"listening    unix:{s.socket}",
                     f"unseal key   created {key_file} (mode 0600)",
                     "in production keep it elsewhere"):
            assert line in text, line
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        p = sv_proc("keys", "create", "persisted", "--type", "ed25519", "--socket", s.socket)
        assert p.returncode == 0
    finally:
        assert s.stop() == 0
    assert "stopped; secret memory zeroed and unmapped" in s.stderr()
    assert not os.path.exists(s.socket)

    again = Serve(base)
    try:
        text = again.ready()
        assert "unseal key   created" not in text and "keys         1 loaded" in text
        p = sv("keys", "show", "persisted", "--json", "--socket", again.socket)
        assert json.loads(p.stdout)["type"] == "ed25519"
    finally:
        assert again.stop() == 0


def test_serve_with_a_passphrase_and_a_wrong_one(base: str) -> None:
    s = Serve(base, *FAST_KDF, environ=env(SECRETVAULT_PASSPHRASE="correct horse"))
    try:
        assert "unseal key   created" not in s.ready()
    finally:
        assert s.stop() == 0
    wrong = Serve(base, environ=env(SECRETVAULT_PASSPHRASE="battery staple"))
    assert wrong.finish() == 2
    line = wrong.stderr().strip().splitlines()[-1]
    assert line.startswith("secretvault: error: WrongPassphrase") and "(fix: " in line
    assert "Traceback" not in wrong.stderr()
    (Path(base) / "pass").write_text("correct horse\n")
    ok = Serve(base, "--passphrase-file", str(Path(base) / "pass"))
    try:
        ok.ready()
    finally:
        assert ok.stop() == 0


def test_serve_on_a_model_says_so(base: str) -> None:
    s = Serve(base, "--backend", "page-model", "--model-memory", str(256 << 20))
    try:
        text = s.ready()
        assert "page-model: a MODEL" in text and "keys are NOT in secret memory" in text
        stats = json.loads(sv("stats", "--json", "--socket", s.socket).stdout)
        assert stats["protection"] == "model"
        table = sv("stats", "--socket", s.socket).stdout.decode()
        assert "keys are NOT in secret memory" in table
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("args,parts", [
    (["--tcp", "127.0.0.1:0"], ["TCP needs TLS", "--tls-cert"]),
    (["--passphrase-file", "/nonexistent/pass"], ["/nonexistent/pass", "check the path"]),
    (["--policy", "/nonexistent/policy.toml"], ["/nonexistent/policy.toml"]),
])
def test_serve_refuses_bad_configuration_in_one_line(base: str, args: list[str],
                                                    parts: list[str]) -> None:
    s = Serve(base, *args)
    code = s.finish()
    err = s.stderr()
    assert code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("secretvault: error: ") and "(fix: " in line
    for part in parts:
        assert part in line, (part, line)


def test_serve_refuses_an_unsafe_socket_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    p = sv_proc("serve", "--backend", SERVER_BACKEND, "--socket", str(shared / "v.sock"),
                "--data-dir", str(tmp_path / "data"))
    line = one_line_error(p, "writable by others")
    assert "FailedPrecondition" in line


# --- TLS -------------------------------------------------------------------------------------


def test_connect_over_mutual_tls() -> None:
    base = short_dir()
    try:
        os.mkdir(os.path.join(base, "rogue"))
        pki = Pki(base)
        cert, key = pki.issue("server", cn="localhost", server=True)
        policy = os.path.join(base, "policy.toml")
        Path(policy).write_text(
            '[identities.cli]\ntls = ["spiffe://test/cli"]\n[[identities.cli.allow]]\n'
            'operations = ["create_key", "sign", "verify", "get_key"]\nkeys = ["cli/*"]\n')
        with start(base, policy_file=policy, tcp="127.0.0.1:0", tls_cert=cert, tls_key=key,
                   client_ca=pki.ca_path) as s:
            client_cert, client_key = pki.issue("cli", cn="cli", uri="spiffe://test/cli")
            where = ["--connect", f"localhost:{s.tcp_port}", "--ca-cert", pki.ca_path]
            mine = [*where, "--client-cert", client_cert, "--client-key", client_key]
            assert sv("keys", "create", "cli/k", "--type", "ed25519", *mine).returncode == 0
            token = sv("sign", "cli/k", *mine, input=b"over TLS")
            assert token.returncode == 0 and token.stdout[:3] == b"SVS"
            Path(base, "sig").write_bytes(token.stdout)
            assert sv("verify", "cli/k", "--signature", str(Path(base, "sig")), *mine,
                      input=b"over TLS").returncode == 0
            one_line_error(sv("sign", "prod/k", *mine, input=b"m"), "PermissionDenied",
                           "policy")
            # no client certificate: the server refuses the handshake (a child process,
            # so anything grpc's C core might log to fd 2 would show)
            one_line_error(sv_proc("sign", "cli/k", *where, input=b"m"), "ConnectionFailed",
                           f"localhost:{s.tcp_port}", "--ca-cert")
            rogue = Pki(os.path.join(base, "rogue"))
            one_line_error(sv_proc("keys", "list", "--connect", f"localhost:{s.tcp_port}",
                                   "--ca-cert", rogue.ca_path), "ConnectionFailed")
            one_line_error(sv("sign", "cli/k", *where, "--client-cert", client_cert,
                              input=b"m"), "both --client-cert and --client-key")
    finally:
        cleanup(base)


def test_watch_ends_in_one_line_when_the_vault_stops(base: str) -> None:
    s = Serve(base)
    try:
        s.ready()
        watch = subprocess.Popen([*command(), "stats", "--watch", "--json", "--interval", "0.2",
                                  "--socket", s.socket],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
        try:
            assert watch.stdout is not None and watch.stderr is not None
            json.loads(watch.stdout.readline())
            assert s.stop() == 0
            assert watch.wait(timeout=30) == 2
            line = watch.stderr.read().decode().strip()
            assert line.startswith("secretvault: error: the vault ended the stats stream")
            assert "(fix: " in line and "\n" not in line
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
    finally:
        s.kill()


def test_serve_options_reach_the_server_config(tmp_path: Path) -> None:
    """Every limit the server has is an option of ``serve``, passed through."""
    args = build_parser().parse_args([
        "serve", "--data-dir", str(tmp_path), "--socket", str(tmp_path / "s.sock"),
        "--max-message-bytes", "1000", "--max-concurrent-rpcs", "7",
        "--max-streams-per-identity", "3", "--stream-idle-seconds", "2.5", "--grace", "1",
    ])
    config = server_config(args)
    assert (config.max_message_bytes, config.max_concurrent_rpcs,
            config.max_streams_per_identity, config.stream_idle_seconds,
            config.grace_seconds) == (1000, 7, 3, 2.5, 1.0)
    assert config.vault.data_dir == str(tmp_path)
