"""The vault as an SSH agent, driven by real OpenSSH tools (issue 14).

A real server (in this process) serves its agent protocol on the owner's
socket and on a policy identity's ``agent_sockets``; ``ssh-add``,
``ssh-keygen -Y``, ``ssh`` against a real ``sshd``, and ``git commit -S``
talk to it through ``SSH_AUTH_SOCK`` / ``IdentityAgent``.  ``ssh-add``'s
lock, lifetime and delete commands are run against OpenSSH's own
``ssh-agent`` too, and must answer the same.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.peers.ssh_agent import AgentClient, AgentProtocolError
from secretvault.vault.server import VaultServer
from tests.integration._ssh import OpenSshAgent, Sshd, askpass, keygen, run, tool
from tests.integration._support import HMAC, REPO, Child, cleanup, short_dir, start, stubs

POLICY = """
[identities.dev]
[[identities.dev.agent_sockets]]
path = "{base}/dev/agent.sock"
[[identities.dev.allow]]
operations = ["sign"]
keys = ["dev/*"]
[[identities.dev.allow]]
operations = ["ssh_add_key", "ssh_remove_key"]

[identities.adder]
[[identities.adder.agent_sockets]]
path = "{base}/adder/agent.sock"
[[identities.adder.allow]]
operations = ["ssh_add_key", "ssh_remove_key"]

[identities.ro]
[[identities.ro.agent_sockets]]
path = "{base}/ro/agent.sock"
[[identities.ro.allow]]
operations = ["sign"]
keys = ["nothing/*"]
{extra}
"""


def _server(base: str, extra: str = "") -> VaultServer:
    policy = Path(base) / "policy.toml"
    policy.write_text(POLICY.format(base=base, extra=extra))
    return start(base, policy_file=str(policy), ssh_agent=f"{base}/run/agent.sock")


@pytest.fixture
def base() -> Iterator[str]:
    d = short_dir()
    yield d
    cleanup(d)


@pytest.fixture
def server(base: str) -> Iterator[VaultServer]:
    srv = _server(base)
    try:
        vault = stubs(srv.config.vault.socket)
        for name in ("demo", "dev/a"):
            vault.create(name)
        vault.create("mac", HMAC)
        yield srv
    finally:
        srv.stop()


def owner(base: str) -> str:
    return f"{base}/run/agent.sock"


def dev(base: str) -> str:
    return f"{base}/dev/agent.sock"


def audit(base: str) -> list[dict[str, object]]:
    lines = Path(base, "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


def public_line(server: VaultServer, name: str) -> str:
    return server.vault.keyring.public_key(name, fmt="openssh").decode().strip()


def test_ssh_add_L_lists_the_keys_each_identity_may_use(base: str,
                                                        server: VaultServer) -> None:
    out = run(["ssh-add", "-L"], owner(base), check=True).stdout.splitlines()
    # the owner's socket: every Ed25519 key of the vault, its name as comment (no HMAC key)
    want = {name: public_line(server, name).split()[:2] for name in ("demo", "dev/a")}
    assert sorted(out) == sorted(f"{k} {b} {name}" for name, (k, b) in want.items())
    # dev's socket: only what dev may sign with
    out = run(["ssh-add", "-L"], dev(base), check=True).stdout.splitlines()
    assert out == [" ".join([*want["dev/a"], "dev/a"])]
    # ro may sign with nothing that exists: OpenSSH's own words for an empty agent
    empty = run(["ssh-add", "-L"], f"{base}/ro/agent.sock")
    assert empty.returncode == 1 and "The agent has no identities." in empty.stdout


def test_ssh_add_of_an_ssh_keygen_key_then_it_signs(base: str, server: VaultServer,
                                                    tmp_path: Path) -> None:
    line = keygen(tmp_path / "id", "me@test")
    added = run(["ssh-add", str(tmp_path / "id")], dev(base), check=True)
    assert "Identity added" in added.stderr
    listed = run(["ssh-add", "-L"], dev(base), check=True).stdout.splitlines()
    assert line in listed
    # it signs: ssh-keygen -Y sign finds the private half in the agent only
    message = tmp_path / "msg"
    message.write_text("hello, agent\n")
    (tmp_path / "id").unlink()  # the private key file is gone: only the agent has it
    run(["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(tmp_path / "id.pub"),
         str(message)], dev(base), check=True)
    _verify(tmp_path, line, message, "file")
    records = [r for r in audit(base) if r["listener"] == f"ssh-agent:{dev(base)}"]
    assert {(r["operation"], r["result"]) for r in records} >= {
        ("ssh_add", "attempt"), ("ssh_add", "ok"), ("ssh_sign", "ok")}
    assert all(r["identity"] == "dev" for r in records)
    # not the owner's, nor ro's: each identity has its own agent keys
    assert line not in run(["ssh-add", "-L"], owner(base)).stdout


def _verify(directory: Path, public: str, message: Path, namespace: str) -> None:
    kind, blob = public.split()[:2]
    allowed = directory / "allowed_signers"
    allowed.write_text(f"signer@test {kind} {blob}\n")
    with open(message, "rb") as f:
        out = subprocess.run([tool("ssh-keygen"), "-Y", "verify", "-n", namespace, "-f",
                              str(allowed), "-I", "signer@test", "-s", f"{message}.sig"],
                             stdin=f, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "Good" in out.stdout, out.stdout + out.stderr


def test_ssh_keygen_Y_sign_n_git_with_a_vault_key(base: str, server: VaultServer,
                                                  tmp_path: Path) -> None:
    line = public_line(server, "demo")
    (tmp_path / "demo.pub").write_text(line + "\n")
    message = tmp_path / "commit.txt"
    message.write_text("tree 0000\n\nsigned by a key in secret memory\n")
    run(["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(tmp_path / "demo.pub"),
         str(message)], owner(base), check=True)
    _verify(tmp_path, line, message, "git")
    # dev may not use demo: ssh-keygen finds no such key in dev's agent...
    (tmp_path / "commit.txt.sig").unlink()
    refused = run(["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(tmp_path / "demo.pub"),
                   str(message)], dev(base))
    assert refused.returncode != 0 and not (tmp_path / "commit.txt.sig").exists()
    # ...and a client that asks anyway is refused, audited with the key's name
    blob = base64.b64decode(line.split()[1])
    with AgentClient(dev(base)) as client, pytest.raises(AgentProtocolError, match="refused"):
        client.sign(blob, b"data")
    assert any(r["operation"] == "ssh_sign" and r["key"] == "demo" and r["identity"] == "dev"
               and r["result"] == "PERMISSION_DENIED" for r in audit(base))


@pytest.mark.root
def test_a_real_sshd_accepts_ssh_with_the_vault_agent(base: str, server: VaultServer,
                                                      tmp_path: Path) -> None:
    keys = run(["ssh-add", "-L"], dev(base), check=True).stdout
    sshd = Sshd(tmp_path, keys)
    try:
        out = run([
            "ssh", "-F", "/dev/null", "-p", str(sshd.port), "-o", f"IdentityAgent={dev(base)}",
            "-o", f"UserKnownHostsFile={sshd.known_hosts()}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
            "root@127.0.0.1", "echo", "ran-through-the-vault"], dev(base))
    finally:
        sshd.close()
    assert out.returncode == 0, out.stderr + sshd.log.read_text()
    assert out.stdout.strip() == "ran-through-the-vault"
    # the signature is tied to the host: session-bind recorded with the host key
    host_fp = subprocess.run([tool("ssh-keygen"), "-l", "-f", f"{sshd.host_key}.pub"],
                             capture_output=True, text=True, check=True).stdout.split()[1]
    binds = [r for r in audit(base) if r["operation"] == "ssh_session_bind"]
    assert binds and binds[0]["detail"]["host_key"] == host_fp  # type: ignore[index]
    assert binds[0]["detail"]["verified"] == "true"  # type: ignore[index]
    signed = [r for r in audit(base) if r["operation"] == "ssh_sign" and r["result"] == "ok"]
    assert signed and signed[-1]["key"] == "dev/a" and signed[-1]["identity"] == "dev"


def test_git_commit_S_with_gpg_format_ssh_is_verified(base: str, server: VaultServer,
                                                      tmp_path: Path) -> None:
    git = tool("git")
    repo = tmp_path / "repo"
    line = public_line(server, "demo")
    kind, blob = line.split()[:2]
    (tmp_path / "allowed").write_text(f"dev@example.org {kind} {blob}\n")
    env = {"GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": str(tmp_path)}

    def g(*args: str) -> subprocess.CompletedProcess[str]:
        return run([git, "-C", str(repo), *args], owner(base), env=env)

    subprocess.run([git, "init", "-q", str(repo)], check=True, env={**os.environ, **env})
    for key, value in (("user.name", "Dev"), ("user.email", "dev@example.org"),
                       ("gpg.format", "ssh"), ("user.signingkey", f"key::{kind} {blob}"),
                       ("gpg.ssh.allowedSignersFile", str(tmp_path / "allowed"))):
        assert g("config", key, value).returncode == 0
    (repo / "f.txt").write_text("signed\n")
    assert g("add", "f.txt").returncode == 0
    commit = g("commit", "-S", "-q", "-m", "signed in secret memory")
    assert commit.returncode == 0, commit.stderr
    verified = g("verify-commit", "-v", "HEAD")
    assert verified.returncode == 0, verified.stderr
    assert 'Good "git" signature for dev@example.org' in verified.stderr


def _normalise(text: str, sock: str) -> str:
    text = text.replace(sock, "SOCK")
    return re.sub(r"/tmp/\S+", "PATH", text)


def _script(sock: str, tmp: Path, key: Path) -> list[tuple[str, int, str]]:
    """ssh-add's lock, lifetime and delete commands, as a user types them."""
    out = []

    def step(label: str, args: list[str], env: dict[str, str] | None = None) -> None:
        r = run(args, sock, env=env)
        out.append((label, r.returncode, _normalise(r.stdout + r.stderr, sock)))

    # the public half alone: ssh-keygen must ask the agent (no key file to fall back on)
    public = tmp / "pub" / "id.pub"
    public.parent.mkdir(exist_ok=True)
    public.write_text(Path(f"{key}.pub").read_text())
    sig = tmp / "nothing.sig"

    def sign(label: str) -> None:
        sig.unlink(missing_ok=True)
        step(label, ["ssh-keygen", "-Y", "sign", "-n", "x", "-f", str(public),
                     str(tmp / "nothing")])

    step("add", ["ssh-add", str(key)])
    step("list", ["ssh-add", "-l"])
    sign("sign")
    step("lock", ["ssh-add", "-x"], askpass(tmp, "pass one"))
    step("list locked", ["ssh-add", "-l"])
    sign("sign locked")
    step("unlock wrong", ["ssh-add", "-X"], askpass(tmp, "pass two"))
    step("unlock", ["ssh-add", "-X"], askpass(tmp, "pass one"))
    step("list unlocked", ["ssh-add", "-l"])
    sign("sign unlocked")
    step("delete", ["ssh-add", "-d", f"{key}.pub"])
    step("delete again", ["ssh-add", "-d", f"{key}.pub"])
    step("add for 1 s", ["ssh-add", "-t", "1", str(key)])
    step("list timed", ["ssh-add", "-l"])
    time.sleep(2.5)
    step("list expired", ["ssh-add", "-l"])
    sign("sign expired")
    step("add confirm", ["ssh-add", "-c", str(key)])
    step("add again", ["ssh-add", str(key)])
    step("delete all", ["ssh-add", "-D"])
    step("list none", ["ssh-add", "-l"])
    return out


def test_ssh_add_D_x_X_t_d_behave_as_with_openssh_agent(base: str, server: VaultServer,
                                                        tmp_path: Path) -> None:
    """The same ssh-add session against OpenSSH's agent and the vault's: the
    same exit codes and the same words (ssh-add -c excepted: the vault cannot
    ask for confirmation, and refuses the key, as OpenSSH's agent does when
    no askpass is there to ask)."""
    key = tmp_path / "id"
    keygen(key, "me@test")
    (tmp_path / "nothing").write_text("x\n")
    reference = OpenSshAgent(tmp_path)
    try:
        theirs = _script(reference.socket, tmp_path, key)
    finally:
        reference.close()
    # an identity that may add and remove, and sign with no vault key: its
    # view of the agent holds what it added, as OpenSSH's agent does
    ours = _script(f"{base}/adder/agent.sock", tmp_path, key)
    for (label, code, text), (_, their_code, their_text) in zip(ours, theirs, strict=True):
        if label == "add confirm":
            # OpenSSH's agent accepts the key and asks at each use; the vault refuses it
            assert code != 0 and their_code == 0, (text, their_text)
            continue
        assert (label, code) == (label, their_code), (label, text, their_text)
        assert text == their_text, label
    # and what both did is what a user expects, not a failure they share
    codes = {label: code for label, code, _ in ours}
    assert codes == {
        "add": 0, "list": 0, "sign": 0, "lock": 0, "list locked": 1, "sign locked": 255,
        "unlock wrong": 1, "unlock": 0, "list unlocked": 0, "sign unlocked": 0,
        "delete": 0, "delete again": 1, "add for 1 s": 0, "list timed": 0,
        "list expired": 1, "sign expired": 255, "add confirm": 1, "add again": 0,
        "delete all": 0, "list none": 1}, ours
    records = audit(base)
    for op in ("ssh_lock", "ssh_unlock", "ssh_remove", "ssh_remove_all", "ssh_expire"):
        assert any(r["operation"] == op for r in records), op
    assert any(r["operation"] == "ssh_unlock" and r["result"] == "FAILED_PRECONDITION"
               for r in records)


def test_adding_is_its_own_grant_off_by_default(base: str, server: VaultServer,
                                                tmp_path: Path) -> None:
    keygen(tmp_path / "id")
    refused = run(["ssh-add", str(tmp_path / "id")], f"{base}/ro/agent.sock")
    assert refused.returncode != 0
    assert "The agent has no identities." in run(["ssh-add", "-l"],
                                                  f"{base}/ro/agent.sock").stdout
    assert any(r["operation"] == "ssh_add" and r["identity"] == "ro"
               and r["result"] == "PERMISSION_DENIED" for r in audit(base))
    removed = run(["ssh-add", "-D"], f"{base}/ro/agent.sock")
    assert removed.returncode != 0


def test_the_stats_count_agent_operations(base: str, server: VaultServer,
                                          tmp_path: Path) -> None:
    keygen(tmp_path / "id")
    run(["ssh-add", str(tmp_path / "id")], dev(base), check=True)
    (tmp_path / "m").write_text("m\n")
    run(["ssh-keygen", "-Y", "sign", "-n", "x", "-f", str(tmp_path / "id.pub"),
         str(tmp_path / "m")], dev(base), check=True)
    ops = {(o.operation, o.result): o.count
           for o in stubs(server.config.vault.socket).get_stats().operations}
    assert ops[("ssh_add", "ok")] == 1 and ops[("ssh_sign", "ok")] >= 1


def test_persisted_agent_keys_survive_a_restart(tmp_path: Path) -> None:
    base = short_dir()
    try:
        srv = _server(base, "[ssh_agent]\npersist = true\n")
        try:
            line = keygen(tmp_path / "id")
            run(["ssh-add", str(tmp_path / "id")], dev(base), check=True)
            names = [k.name for k in srv.vault.keyring.list("ssh-agent/")]
        finally:
            srv.stop()
        assert len(names) == 1 and names[0].startswith("ssh-agent/dev/")
        srv = _server(base, "[ssh_agent]\npersist = true\n")
        try:
            listed = run(["ssh-add", "-L"], dev(base), check=True).stdout.splitlines()
            assert " ".join(line.split()[:2]) + f" {names[0]}" in listed
            (tmp_path / "m").write_text("m\n")
            (tmp_path / "id").unlink()
            run(["ssh-keygen", "-Y", "sign", "-n", "x", "-f", str(tmp_path / "id.pub"),
                 str(tmp_path / "m")], dev(base), check=True)
            _verify(tmp_path, line, tmp_path / "m", "x")
            run(["ssh-add", "-d", str(tmp_path / "id.pub")], dev(base), check=True)
            assert srv.vault.keyring.list("ssh-agent/") == []
        finally:
            srv.stop()
    finally:
        cleanup(base)


def test_memory_only_by_default_gone_after_a_restart(base: str, tmp_path: Path) -> None:
    srv = _server(base)
    try:
        line = keygen(tmp_path / "id")
        run(["ssh-add", str(tmp_path / "id")], dev(base), check=True)
        assert srv.vault.keyring.list("ssh-agent/") == []
    finally:
        srv.stop()
    srv = _server(base)
    try:
        assert line not in run(["ssh-add", "-L"], dev(base)).stdout
    finally:
        srv.stop()



def test_serve_ssh_agent_and_the_ssh_agent_command(base: str) -> None:
    """The real command: ``serve --ssh-agent`` makes ssh-agent.sock beside the
    socket; ``secretvault ssh-agent`` prints the line a shell evals; the
    eval'ed shell's ssh-add lists the vault's keys."""
    child = Child(base, ["--ssh-agent"])
    try:
        child.wait_ready()
        sock = os.path.join(base, "run", "ssh-agent.sock")
        assert os.path.exists(sock) and stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        stubs(child.socket).create("demo")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "secretvault", "--socket", child.socket, "ssh-agent"]
        line = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True,
                              cwd=REPO).stdout
        assert line == f"SSH_AUTH_SOCK={sock}; export SSH_AUTH_SOCK;\n"
        csh = subprocess.run([*cmd, "-c"], capture_output=True, text=True, env=env,
                             check=True, cwd=REPO).stdout
        assert csh == f"setenv SSH_AUTH_SOCK {sock};\n"
        shell = subprocess.run(["sh", "-c", f'eval "$({" ".join(cmd)})"; ssh-add -L'],
                               capture_output=True, text=True, env=env, check=True, cwd=REPO)
        assert shell.stdout.strip().endswith(" demo")
    finally:
        child.terminate()
        child.proc.wait(timeout=30)
        child.close()
    assert not os.path.exists(sock)  # removed at stop
    # nothing answers now: one line naming the fix, status 2
    gone = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert gone.returncode == 2 and "no SSH agent answers on" in gone.stderr
    assert "secretvault serve --ssh-agent" in gone.stderr
