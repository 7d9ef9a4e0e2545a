"""``python -m secretvault.vault.cli.worker``: only a supervisor's child serves."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from secretvault.vault.cli.worker import EXIT_ORPHAN
from secretvault.vault.config import ServerConfig, WorkerSlot

REPO = Path(__file__).resolve().parents[4]


def _run(payload: bytes) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "secretvault.vault.cli.worker"],
                          input=payload, capture_output=True, env=env, timeout=60,
                          cwd=str(REPO))


def test_a_configuration_without_a_worker_slot_is_refused() -> None:
    done = _run(pickle.dumps(ServerConfig()))
    assert done.returncode == 2
    assert b"this is a worker of 'serve --workers'" in done.stderr


def test_a_worker_whose_supervisor_is_not_its_parent_stops_at_once(tmp_path: Path) -> None:
    """It would have no one to stop it: the parent-death signal is set too late."""
    slot = WorkerSlot(0, 1, str(tmp_path), supervisor_pid=1)
    done = _run(pickle.dumps(replace(ServerConfig(), worker=slot)))
    assert done.returncode == EXIT_ORPHAN, done.stderr
    assert not list(tmp_path.iterdir())  # nothing was opened or bound
