"""``secretvault ssh-agent``: the socket it names, and its refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secretvault.vault.cli import main


def test_nothing_answering_is_one_line_with_the_fix(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    os.chmod(tmp_path, 0o700)
    assert main(["--socket", str(tmp_path / "vault.sock"), "ssh-agent"]) == 2
    err = capsys.readouterr().err
    assert f"no SSH agent answers on {tmp_path / 'ssh-agent.sock'}" in err
    assert "secretvault serve --ssh-agent" in err


def test_a_socket_in_a_directory_others_can_write_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    assert main(["ssh-agent", "--agent-socket", str(shared / "agent.sock")]) == 2
    assert "UnsafeSocketPath" in capsys.readouterr().err


def test_the_socket_may_follow_the_subcommand(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    os.chmod(tmp_path, 0o700)
    assert main(["ssh-agent", "--socket", str(tmp_path / "vault.sock")]) == 2
    assert str(tmp_path / "ssh-agent.sock") in capsys.readouterr().err
