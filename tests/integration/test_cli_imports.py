"""A command imports what its own job needs, and nothing of the server's.

``secretvault sign`` and ``secretvault keys list`` are clients of a running
vault: they need grpcio, the wire messages and the client, not the server,
the secret-memory backends, rich, cryptography or PyNaCl.  Each command runs
here against a real server in a fresh interpreter under ``python -X
importtime``, through both entries (``python -m secretvault`` and the
installed ``secretvault`` script), and the modules it imported are checked.
How long a start takes is measured by ``benchmarks/cli_start.py``, never
asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretvault.clients import VaultClient
from secretvault.vault.server import VaultServer
from tests.integration._support import REPO, cleanup, short_dir, start

#: what a client command must not load: the server and what only it needs
HEAVY = (
    "secretvault.vault.server", "secretvault.vault.edge", "secretvault.vault.app",
    "secretvault.vault.keyring", "secretvault.vault.config", "secretvault.vault.store",
    "secretvault.vault.cli.serve", "secretvault.backends", "secretvault.embedded",
    "rich", "cryptography", "nacl", "cffi", "sqlite3", "prometheus_client",
    "grpc_reflection.v1alpha", "importlib.metadata",
    "secretvault.clients._stats",  # the stats records: only stats needs them
)

#: what each command defers because its own call does not need it: the
#: records it never returns (creating frozen dataclasses is most of their
#: import), the other commands' modules (the parser builds only the chosen
#: subcommand's options)
DEFERRED = {
    "sign": (
        "secretvault.clients._types",  # Key, KeyVersion, PublicKey
        "secretvault.clients._ops",  # the batch operations
        "secretvault.vault.cli.keys", "secretvault.vault.cli.render",
        "secretvault.vault.cli.stats", "secretvault.vault.cli.parser_serve",
        "json",  # only --json and JWK public keys need it
    ),
    "keys list": (
        "secretvault.clients._ops",
        "secretvault.vault.cli.crypto", "secretvault.vault.cli.stats",
        "secretvault.vault.cli.parser_serve", "json",
    ),
}


@pytest.fixture(scope="module")
def vault() -> Iterator[tuple[VaultServer, Path]]:
    base = short_dir()
    try:
        with start(base) as s:
            with VaultClient(s.config.vault.socket) as c:
                c.create_key("imports/sign", "ed25519")
            msg = Path(base) / "msg"
            msg.write_bytes(b"m" * 64)
            yield s, msg
    finally:
        cleanup(base)


def _imported(entry: list[str], args: list[str], socket: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if k != "SECRETVAULT_SOCKET"}
    env.update(PYTHONPATH=str(REPO), SECRETVAULT_SOCKET=socket)
    p = subprocess.run([sys.executable, "-X", "importtime", *entry, *args],
                       capture_output=True, env=env, timeout=120, check=False)
    err = p.stderr.decode()
    assert p.returncode == 0, err[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in err.splitlines()
            if line.startswith("import time:") and "|" in line}


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == h or m.startswith(h + ".") for h in HEAVY))


ENTRIES = {
    "python -m secretvault": ["-m", "secretvault"],
    "the secretvault script": [str(Path(sys.executable).with_name("secretvault"))],
}


@pytest.mark.parametrize("entry", ENTRIES, ids=str)
@pytest.mark.parametrize("command", ["sign", "keys list"])
def test_client_commands_import_no_server_rich_or_crypto_libraries(
        vault: tuple[VaultServer, Path], entry: str, command: str, tmp_path: Path) -> None:
    server, msg = vault
    argv = ENTRIES[entry]
    if not Path(argv[0]).exists() and argv[0] != "-m":
        pytest.skip("this environment has no installed secretvault script")
    args = (["sign", "imports/sign", "--in", str(msg), "--out", str(tmp_path / "sig")]
            if command == "sign" else ["keys", "list"])
    modules = _imported(argv, args, server.config.vault.socket)
    assert "grpc" in modules  # the call itself went over gRPC
    assert _heavy(modules) == []
    assert sorted(m for m in modules if m in DEFERRED[command]) == []
    if command == "sign":
        assert (tmp_path / "sig").stat().st_size == 7 + 64


#: the command run as ``python -m secretvault`` runs it, with an atexit handler
#: that says whether the interpreter was torn down
_TEARDOWN = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('TEARDOWN', file=sys.stderr))\n"
    "sys.argv = ['secretvault', *sys.argv[1:]]\n"
    "runpy.run_module('secretvault', run_name='__main__', alter_sys=True)\n"
)


def test_a_client_command_exits_at_once_with_its_output_whole(
        vault: tuple[VaultServer, Path], tmp_path: Path) -> None:
    """After a client call ``run()`` flushes stdout and stderr and ends with ``os._exit``:
    no interpreter teardown (about 15 ms of grpc's), the same output and status."""
    server, msg = vault
    env = {k: v for k, v in os.environ.items() if k != "SECRETVAULT_SOCKET"}
    env.update(PYTHONPATH=str(REPO), SECRETVAULT_SOCKET=server.config.vault.socket)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _TEARDOWN, *args], capture_output=True,
                              text=True, env=env, timeout=120, check=False)

    p = run("sign", "imports/sign", "--in", str(msg), "--json")
    assert p.returncode == 0, p.stderr
    assert '"key": "imports/sign"' in p.stdout and p.stdout.endswith("}\n")
    assert "TEARDOWN" not in p.stderr
    p = run("keys", "list")
    assert p.returncode == 0 and "imports/sign" in p.stdout
    assert "TEARDOWN" not in p.stderr
    p = run("sign", "imports/none", "--in", str(msg), "--out", str(tmp_path / "sig"))
    assert p.returncode == 2
    assert p.stderr.startswith("secretvault: error: KeyNotFound") and p.stderr.count("\n") == 1
    # a usage error exits as before, through the interpreter's own exit
    p = run("sign")
    assert p.returncode == 2 and "TEARDOWN" in p.stderr
