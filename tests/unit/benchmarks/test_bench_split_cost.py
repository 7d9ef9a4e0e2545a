"""benchmarks/bench_split_cost.py: how faults are sorted, and a real (small) run."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import bench_split_cost as bench

R = bench.PAGES_PER_2M  # frames per 2 MiB region


def test_classify_sorts_faults_by_what_they_did_to_the_direct_map() -> None:
    seen = {7}  # region 7 was touched by an earlier round
    deltas = [(1, 0), (0, 0), (0, 0), (1, 1), (0, 0), (1, 0), (2, 0), (0, 1)]
    frames = [3 * R, 3 * R + 1, 7 * R + 5, 9 * R, 11 * R, 3 * R + 2, 12 * R, 13 * R]
    kinds, pre_split = bench.classify(deltas, frames, seen)
    assert kinds == [
        "split",  # first page of region 3, the counter rose by one
        "already",  # region 3 again: split by the fault before
        "already",  # region 7, split in an earlier round
        "split_1g",  # the 1 GiB entry above went first
        "already",  # region 11 new to the run, but split before it
        "ambiguous",  # a split counted, but region 3 was split already: someone else's
        "ambiguous",  # two splits in one fault: another process split too
        "ambiguous",  # a level-3 split without a level-2 one
    ]
    assert pre_split == 1
    assert seen == {3, 7, 9, 11, 12, 13}


def test_what_is_not_measured_is_said_with_the_reason() -> None:
    assert "no hardware PMU" in bench.not_measured(False)
    assert "cannot tell" in bench.not_measured(True)
    for text in (bench.not_measured(False), bench.not_measured(True)):
        assert text.startswith("NOT MEASURED") and "does not estimate" in text
    assert bench.has_pmu() == os.path.isdir("/sys/bus/event_source/devices/cpu")


@pytest.mark.root
@pytest.mark.memfd_secret
def test_a_small_run_accounts_for_every_fault() -> None:
    assert bench.missing_prerequisite() is None
    res = bench.measure(1024, 2, log=False)
    secret = sum(len(res.samples[k]) for k in ("split", "split_1g", "already"))
    assert secret + res.ambiguous == 2 * 1024
    assert len(res.samples["anon"]) + res.anon_ambiguous == 2 * 1024
    assert res.samples["floor"] and len(res.round_medians) == 2
    splits = len(res.samples["split"]) + len(res.samples["split_1g"])
    assert splits <= res.counters_after[0] - res.counters_before[0]
    # a first touch that faults costs more than one that does not
    assert bench.median(res.samples["already"]) > bench.median(res.samples["floor"])
    assert bench.median(res.samples["anon"]) > bench.median(res.samples["floor"])


@pytest.mark.root
@pytest.mark.memfd_secret
def test_json_output_names_the_figures_and_what_is_not_measured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench.main(["--json", "--rounds", "1", "--pages", "512"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["kinds"]) == {k for k, _ in bench.KINDS}
    assert doc["kinds"]["anon"]["median_us"] > 0
    assert set(doc["ratios_median_of_rounds"]) == {"split/anon", "already/anon", "split/already"}
    assert doc["not_measured"].startswith("NOT MEASURED")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--pages", "0"])
