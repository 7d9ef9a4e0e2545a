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
    ),
    "keys list": (
        "secretvault.clients._ops",
        "secretvault.vault.cli.crypto", "secretvault.vault.cli.stats",
        "secretvault.vault.cli.parser_serve",
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
