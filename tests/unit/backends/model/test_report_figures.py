"""The figures README.md and docs/models.md quote come from the model run.

The README's command (``secretvault model compare --fallback``, defaults
otherwise) is run once; its Markdown table must be the README's table, and
every figure the conclusions quote is formatted here from the results and
looked for in the text (whitespace runs and ``**`` ignored).  Nothing is
hard-coded but the sentences' wording: a model change that moves a figure
fails here until the prose is updated.  docs/models.md's table of the
``docs/data/churn*.json`` runs is checked against those files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from secretvault.backends.model._churn_points import load_kernel_points
from secretvault.backends.model.report import compare, markdown_table
from secretvault.backends.model.scenarios import COMPARED, SCENARIOS, ModelResult, ScenarioConfig

REPO = Path(__file__).resolve().parents[4]
README = REPO / "README.md"
MODELS_MD = REPO / "docs" / "models.md"
MiB = 1 << 20

Results = dict[tuple[str, str], ModelResult]


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("**", ""))


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {title}' section"
    return match.group(1)


@pytest.fixture(scope="module")
def cfg() -> ScenarioConfig:
    return ScenarioConfig()  # what the README's command runs


@pytest.fixture(scope="module")
def runs(cfg: ScenarioConfig) -> list[ModelResult]:
    return compare(list(SCENARIOS), [*COMPARED, "pooled-pmd-model+fallback"], cfg)


@pytest.fixture(scope="module")
def by(runs: list[ModelResult]) -> Results:
    return {(r.scenario, r.model): r for r in runs}


def test_the_readme_table_is_the_model_runs(runs: list[ModelResult]) -> None:
    report = section(README.read_text(), "Pool or page by page? The models' answer")
    assert markdown_table(runs) in report


def readme_figures(by: Results, cfg: ScenarioConfig) -> list[str]:
    page = [r for (_, m), r in by.items() if m == "page-model"]
    pps = [r.pages_per_split for r in page if r.pages_per_split is not None]
    fork, churn = by["fork-bomb", "page-model"], by["churn", "page-model"]
    regions = fork.machine_2m_regions
    ring = by["keyring", "pooled-pmd-model"]
    tenants, bomb = by["tenants", "pooled-pmd-model"], by["fork-bomb", "pooled-pmd-model"]
    fallback = by["fork-bomb", "pooled-pmd-model+fallback"]
    buddy_t, buddy_f = by["tenants", "pmd-buddy-model"], by["fork-bomb", "pmd-buddy-model"]
    chunks = cfg.cma_bytes // (2 * MiB)
    return [
        f"{min(pps):,.0f}\u2013{max(pps):,.0f} pages per level-2 split",  # an en dash
        f"100,000 one-page processes split {fork.level2_splits:,} of the {regions:,} 2 MiB "
        f"regions of a {cfg.memory_bytes >> 30} GiB machine "
        f"({100 * fork.level2_splits / regions:.0f}% of the direct map at 4 KiB)",
        f"the count stayed at {churn.level2_splits} while {churn.faults:,} pages came and went",
        f"holds {ring.peak_pool_waste_bytes / MiB:.0f} MiB for {ring.faults * 4096 / MiB:.0f} MiB "
        f"of keys, and its memcg is charged {ring.worst_memcg_charge_ratio:.0f} times",
        f"a {cfg.cma_bytes >> 20} MiB area has {chunks}",
        f"{tenants.oom_kills:,} of the {cfg.tenants} tenants' vaults",
        f"{bomb.oom_kills:,} of the {cfg.keys:,} one-page processes once {bomb.faults:,} had "
        "drained the area",
        f"charged {bomb.worst_memcg_charge_ratio:.0f} times its page",
        f"the same splits ({fallback.level2_splits:,} in the fork bomb)",
        f"the free 2 MiB blocks fell from {buddy_t.free_2m_series[0][1]:,} to "
        f"{buddy_t.min_free_2m_blocks:,} and {buddy_t.peak_pool_waste_bytes / MiB:,.0f} MiB were "
        f"held unused (x{buddy_t.worst_memcg_charge_ratio:.0f} their use)",
        f"fell back to {buddy_f.fallback_faults:,} order-0 pages ({buddy_f.level2_splits} "
        f"splits) and then ran out of memory itself: {buddy_f.allocation_failures:,} faults "
        "failed",
    ]


def test_the_readme_conclusions_quote_the_model_runs(by: Results, cfg: ScenarioConfig) -> None:
    text = flat(section(README.read_text(), "Pool or page by page? The models' answer"))
    missing = [f for f in readme_figures(by, cfg) if flat(f) not in text]
    assert not missing, "README.md no longer matches the model run:\n" + "\n".join(missing)


def test_the_readme_claims_hold_in_the_model_runs(by: Results) -> None:
    """What the conclusions say without a figure."""
    pooled = [r for (_, m), r in by.items() if m == "pooled-pmd-model"]
    # "no level-2 split in any scenario, one level-3 split"
    assert all(r.level2_splits == 0 and r.level3_splits == 1 for r in pooled)
    # PMD-buddy: "no level-2 split in the keyring, churn and tenants scenarios"
    assert all(by[s, "pmd-buddy-model"].level2_splits == 0 for s in ("keyring", "churn", "tenants"))
    # "took every free 2 MiB block"
    assert by["fork-bomb", "pmd-buddy-model"].min_free_2m_blocks == 0
    # page by page "never fails while memory is free"
    assert all(by[s, "page-model"].allocation_failures == 0 for s in SCENARIOS)


def models_md_rows(by: Results) -> dict[str, list[str]]:
    """The PMD-buddy table: each scenario's row and what its cells must say."""

    def blocks(r: ModelResult) -> str:
        return f"{r.free_2m_series[0][1]:,}, {r.min_free_2m_blocks:,}, {r.free_2m_series[-1][1]:,}"

    rows = {}
    for s in SCENARIOS:
        page, buddy = by[s, "page-model"], by[s, "pmd-buddy-model"]
        head = f"| {s}{' (256)' if s == 'tenants' else ''} |"
        cells = [f"{head} {blocks(page)} | {blocks(buddy)} |"]
        if buddy.level2_splits == 0:
            cells += [f"no level-2 split (page-model {page.level2_splits})",
                      f"{buddy.peak_pool_waste_bytes / MiB:,.0f} MiB held unused at peak"]
        else:
            cells += [f"then {buddy.fallback_faults:,} order-0 fallbacks "
                      f"({buddy.level2_splits} splits); then memory itself ran out: "
                      f"{buddy.allocation_failures:,} faults failed"]
        rows[head] = cells
    return rows


def test_models_md_quotes_the_model_runs(by: Results, cfg: ScenarioConfig) -> None:
    text = MODELS_MD.read_text()
    lines = [flat(line) for line in text.splitlines()]
    missing = []
    for head, cells in models_md_rows(by).items():
        row = next((line for line in lines if line.startswith(head)), "")
        missing += [c for c in cells if c not in row]
    t, b = by["tenants", "pooled-pmd-model"], by["fork-bomb", "pooled-pmd-model"]
    oom = (f"tenants, {t.oom_kills:,} of {cfg.tenants} vaults OOM-killed; fork-bomb, "
           f"{b.oom_kills:,} of {cfg.keys:,} processes OOM-killed")
    missing += [oom] if oom not in flat(text) else []
    assert not missing, "docs/models.md no longer matches the model run:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", ["churn.json", "churn-keep-first.json"])
def test_models_md_table_of_the_kernel_runs_is_the_files(name: str) -> None:
    p = load_kernel_points(str(REPO / "docs" / "data" / name))
    (k1, m1), (k2, m2) = p.phase("grow"), p.phase("again")
    row = (f"| `{name}` | {p.condition} | {p.regions_split_before:,} of "
           f"{p.machine_2m_regions:,} | {k1:,} / {m1:,} | {k2:,} / {m2:,} |")
    assert row in MODELS_MD.read_text()


def test_the_readme_quotes_the_kernel_runs_it_charts() -> None:
    freed = load_kernel_points(str(REPO / "docs" / "data" / "churn.json"))
    kept = load_kernel_points(str(REPO / "docs" / "data" / "churn-keep-first.json"))
    assert not freed.keep_first and kept.keep_first
    (fk1, fm1), (fk2, fm2) = freed.phase("grow"), freed.phase("again")
    (kk1, km1), (kk2, km2) = kept.phase("grow"), kept.phase("again")
    figures = [
        f"the first 2 GiB made {fk1:,} new splits and, freed, the second {fk2:,}; the model "
        f"simulated {fm1:,} and {fm2:,}",
        f"the second 2 GiB made {kk2:,} new splits after the first's {kk1:,} "
        f"(model: {km1:,} and {km2:,})",
    ]
    text = flat(section(README.read_text(), "Pool or page by page? The models' answer"))
    missing = [f for f in figures if flat(f) not in text]
    assert not missing, "README.md no longer matches docs/data/churn*.json:\n" + "\n".join(missing)
