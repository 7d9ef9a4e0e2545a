"""``secretvault model compare``: options, table, JSON, chart."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from secretvault.backends.model import report


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    report.configure_parser(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4G", 4 << 30),
        ("256M", 256 << 20),
        ("256MiB", 256 << 20),
        ("512k", 512 << 10),
        ("4096", 4096),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert report.parse_size(text) == value


def test_parse_size_rejects() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        report.parse_size("lots")


def test_defaults() -> None:
    args = parse()
    assert args.scenario is None and args.keys == 100_000
    assert (args.memory, args.cma) == (4 << 30, 256 << 20)
    assert not args.fallback and args.seed == 0 and args.plot is None
    assert args.kernel_points is None


SMALL = ("--keys", "1500", "--memory", "512M", "--cma", "16M")


def test_table_names_every_scenario_and_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.run(parse(*SMALL, "--scenario", "fork-bomb", "--scenario", "keyring")) == 0
    out = capsys.readouterr().out
    for word in (
        "fork-bomb",
        "keyring",
        "page-model",
        "pooled-pmd-model",
        "L2 splits",
        "DirectMap4k",
        "pool waste",
        "memcg over-charge",
        "protection: model",
        "pmd-buddy-model",
        "free 2M blocks",
        "OOM-killed",
    ):
        assert word in out
    assert "churn" not in out and "+fallback" not in out


def test_json_has_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.run(parse(*SMALL, "--scenario", "fork-bomb", "--fallback", "--json")) == 0
    rows = json.loads(capsys.readouterr().out)
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {
        "page-model",
        "pooled-pmd-model",
        "pmd-buddy-model",
        "pooled-pmd-model+fallback",
    }
    assert by_model["pooled-pmd-model"]["allocation_failures"] == 1500 - 8
    # v16: every failed fault was VM_FAULT_OOM, and its process was killed
    assert by_model["pooled-pmd-model"]["oom_kills"] == 1500 - 8
    assert by_model["pooled-pmd-model+fallback"]["oom_kills"] == 0
    buddy = by_model["pmd-buddy-model"]
    assert buddy["free_2m_series"][0][0] == 0 and buddy["min_free_2m_blocks"] == 0
    assert by_model["page-model"]["allocation_failures"] == 0
    assert by_model["pooled-pmd-model"]["level2_splits"] == 0


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.png"
    assert report.run(parse(*SMALL, "--scenario", "tenants", "--plot", str(out))) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "chart written" in capsys.readouterr().err


def test_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.run(parse(*SMALL, "--scenario", "churn", "--markdown")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| scenario | model |")
    assert len(lines) == 5  # header, rule, one row per design (issue 15: three)
    assert lines[-1].startswith("| churn | pmd-buddy-model |")


def test_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.run(parse("--memory", "64M", "--cma", "64M")) == 2
    assert report.run(parse("--keys", "0")) == 2


DATA = Path(__file__).resolve().parents[4] / "docs" / "data"


def test_plot_with_the_kernel_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k.png"
    argv = (*SMALL, "--scenario", "keyring", "--plot", str(out),
            "--kernel-points", str(DATA / "churn.json"),
            "--kernel-points", str(DATA / "churn-keep-first.json"))
    args = parse(*argv)
    assert args.kernel_points == [str(DATA / "churn.json"), str(DATA / "churn-keep-first.json")]
    assert report.run(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_points_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": []}')
    assert report.run(parse(*SMALL, "--plot", str(tmp_path / "c.png"),
                            "--kernel-points", str(bad))) == 2
    err = capsys.readouterr().err
    assert err.startswith("--kernel-points: ") and "bad.json" in err and err.count("\n") == 1
    assert not (tmp_path / "c.png").exists()  # refused before the run
    assert report.run(parse(*SMALL, "--kernel-points", str(DATA / "churn.json"))) == 2
    assert "--kernel-points goes with --plot" in capsys.readouterr().err
