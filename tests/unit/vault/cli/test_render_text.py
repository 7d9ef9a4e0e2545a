"""What ``secretvault stats``, ``keys list`` and ``keys show`` print when piped.

Piped (not a terminal), the tables are plain lines for grep and diff: no
line ends in the spaces a table pads its cells with.  ``key bytes`` counts
every used slot, the vault's own keys (KEK, row-MAC key, import key, HMAC
scratch) among them, and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from secretvault.api._proto.secretvault.v1 import stats_pb2
from secretvault.clients import Key, KeyVersion, Stats
from secretvault.clients._stats import stats_from_wire
from secretvault.vault.cli.render import show_key, show_keys, show_stats
from secretvault.vault.cli.stats import show_last


def _stats() -> stats_pb2.Stats:
    return stats_pb2.Stats(
        backend="memfd_secret", protection="secretmem", regions=1, pages_mapped=16,
        pages_resident=3, bytes_locked=65536, key_bytes=352,
        size_classes=[stats_pb2.SizeClass(size=64, pages=1, slots_used=1, slots_free=63),
                      stats_pb2.SizeClass(size=256, pages=1, slots_used=1, slots_free=15)],
        memlock=stats_pb2.Memlock(soft=8 << 20, hard=8 << 20, locked=65536,
                                  headroom_bytes=(8 << 20) - 65536,
                                  headroom_keys={"ed25519": 130000}),
        direct_map=stats_pb2.DirectMap(source="kernel", level2_splits=1),
        keys_by_type={"ed25519": 1},
        operations=[stats_pb2.OperationCount(operation="sign", result="ok", count=7)],
    )


def _key(labels: dict[str, str]) -> Key:
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return Key(name="release", type="ed25519", created=t, primary_version=2,
               min_decryption_version=1, labels=labels,
               versions=(KeyVersion(1, t, b"\x01" * 32), KeyVersion(2, t, b"\x02" * 32)))


def _no_trailing_spaces(text: str) -> None:
    assert text.strip()
    padded = [line for line in text.splitlines() if line != line.rstrip()]
    assert padded == [], padded


def test_stats_piped_has_no_trailing_spaces(capsys: pytest.CaptureFixture[str]) -> None:
    show_stats(stats_from_wire(_stats()))
    out = capsys.readouterr().out
    assert "Secret memory" in out and "Size classes" in out and "Operations" in out
    _no_trailing_spaces(out)


def test_key_list_and_key_piped_have_no_trailing_spaces(
        capsys: pytest.CaptureFixture[str]) -> None:
    # an empty last column (no labels) is where a padded table leaves spaces
    show_keys([_key({}), _key({"team": "ci"})])
    listed = capsys.readouterr().out
    assert listed.splitlines()[0].split() == ["name", "type", "primary", "versions",
                                              "created", "labels"]
    _no_trailing_spaces(listed)
    show_key(_key({}))
    shown = capsys.readouterr().out
    assert "primary version" in shown and "public key (base64)" in shown
    _no_trailing_spaces(shown)


def test_key_bytes_says_it_counts_the_vaults_own_keys(
        capsys: pytest.CaptureFixture[str]) -> None:
    show_stats(stats_from_wire(_stats()))
    line = next(x for x in capsys.readouterr().out.splitlines() if "key bytes" in x)
    assert "352 B" in line
    for own in ("the vault's own", "KEK", "row-MAC key", "import key", "scratch"):
        assert own in line, (own, line)


def test_piped_watch_shows_the_last_view_unpadded_when_ctrl_c_ends_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    def updates() -> Iterator[Stats]:
        yield stats_from_wire(_stats())
        last = _stats()
        last.key_bytes = 416
        yield stats_from_wire(last)
        raise KeyboardInterrupt  # what Ctrl-C raises while waiting for the next

    with pytest.raises(KeyboardInterrupt):
        show_last(updates())
    out = capsys.readouterr().out
    assert out.count("Secret memory") == 1 and "416 B" in out
    _no_trailing_spaces(out)


def test_a_workers_stats_say_whose_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _stats()
    msg.pid = 4242
    msg.worker.CopyFrom(stats_pb2.Worker(index=1, count=2, supervisor_pid=4000))
    s = stats_from_wire(msg)
    assert (s.pid, s.worker.index if s.worker else None) == (4242, 1)
    show_stats(s)
    out = capsys.readouterr().out
    assert ("worker 1 of 2, pid 4242 (supervisor pid 4000): every figure is this worker's "
            "own") in " ".join(out.split())
    # one process: no such line
    show_stats(stats_from_wire(_stats()))
    assert "worker" not in capsys.readouterr().out
