"""The validation's pure parts: /proc/iomem parsing and its verdicts.

The run against the kernel is tests/integration/test_model_validation.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from secretvault.backends.model._validation import PhaseResult, ValidationResult
from secretvault.backends.model.validate import ram_ranges

IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-bfffffff : System RAM
  01000000-02209987 : Kernel code
c0001000-eebfffff : PCI Bus 0000:00
100000000-63fffffff : System RAM
"""


def test_ram_ranges_reads_top_level_system_ram() -> None:
    assert ram_ranges(IOMEM) == [(1, 0x9F), (0x100, 0xC0000), (0x100000, 0x640000)]


def test_unprivileged_iomem_shows_no_ranges() -> None:
    assert ram_ranges("00000000-00000000 : System RAM\n") == []


def phase(**kw: int) -> PhaseResult:
    base = dict(
        name="p",
        pages=1000,
        kernel_l2=3,
        kernel_l3=0,
        predicted_l2=5,
        predicted_l3=0,
        split_confirmed=3,
        presplit=2,
        unexpected=0,
        unexpected_l3=0,
        kernel_distinct_2m=5,
        kernel_distinct_1g=1,
        model_distinct_2m=2,
        model_l2=2,
        kernel_pages_per_fresh_region=480,
    )
    base.update(kw)
    return PhaseResult(**base)  # type: ignore[arg-type]


def result(*phases: PhaseResult, **kw: int) -> ValidationResult:
    base = dict(
        kernel="6.x",
        phases=phases,
        kernel_l2_total=3,
        kernel_l3_total=0,
        directmap_4k_start=8 << 20,
        directmap_2m_start=0,
        directmap_1g_start=0,
        layout_4k=0,
        layout_2m=0,
        layout_1g=0,
        presplit_budget=4,
        known_whole_first_touches=0,
        known_whole_split=0,
        noise_splits=0,
        noise_seconds=2.0,
        run_seconds=1.0,
        tolerance=1,
    )
    base.update(kw)
    return ValidationResult(**base)  # type: ignore[arg-type]


def test_agreement() -> None:
    r = result(phase())
    assert r.agrees, str(r)
    assert (r.predicted_l2, r.predicted_l2_lower, r.kernel_l2) == (5, 1, 3)
    assert "[ok]" in str(r) and "FAIL" not in str(r)
    assert r.phases[0].kernel_pages_per_region == 200
    assert r.phases[0].model_pages_per_split == 500


def test_each_check_can_fail() -> None:
    assert not result(phase(unexpected=2)).agrees  # splits the model did not predict
    assert not result(phase(unexpected_l3=2)).agrees
    assert not result(phase(presplit=5), presplit_budget=4).agrees
    assert not result(phase(), known_whole_first_touches=5, known_whole_split=3).agrees
    assert not result(phase(kernel_l2=7)).agrees  # above the replay's bound
    assert not result(phase(kernel_l2=0, predicted_l2=9), presplit_budget=4).agrees
    # level 3 both ways: 5 replayed, 0 made, on a machine that had split no GiB
    assert not result(phase(predicted_l3=5), layout_1g=8 << 30, directmap_1g_start=8 << 30).agrees
    # ... passes when it had split 5 GiB ranges before the run
    assert result(phase(predicted_l3=5), layout_1g=8 << 30, directmap_1g_start=3 << 30).agrees
    assert not result(phase(kernel_l3=3, predicted_l3=1)).agrees  # above the bound
    failing = result(phase(unexpected=2))
    assert "[FAIL] unexpected splits 2 <= tolerance 1" in str(failing)


def test_result_is_frozen() -> None:
    r = result(phase())
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.tolerance = 100  # type: ignore[misc]
