"""The churn sequence on the real kernel against the page model (issue 15).

``secretvault model churn`` in a test: one 2 GiB region grown from 1 page,
freed, 256 one-page regions, 2 GiB again -- measured on this machine's
kernel, simulated (not replayed) on the page-by-page model started from the
machine's state as /proc reports it.  Asserted, both sides the same
statistic, two-sided (tolerances in ``backends/model/churn.py`` and
``docs/models.md``): new level-2 splits per step and overall within 15% or
the floor, level-3 within 1 per step and 2 overall, and the 2 MiB regions
of each whole allocation within 15%.

And a deliberately wrong model must fail the same comparison: one that takes
secret pages as *movable* (``GFP_HIGHUSER_MOVABLE``, as anonymous memory
is) puts them in other pageblocks than the kernel does.
"""

from __future__ import annotations

import pytest

from secretvault.backends.model import churn
from secretvault.backends.model._machine import Machine
from secretvault.backends.model._pagebypage import PageByPageDesign
from secretvault.backends.model._physmem import MOVABLE
from secretvault.backends.model.validate import missing_prerequisite

pytestmark = [pytest.mark.root, pytest.mark.memfd_secret, pytest.mark.slow]


class MovableSecretPages(PageByPageDesign):
    """Wrong on purpose: secret pages allocated as movable memory."""

    name = "wrong-model (movable secret pages)"

    def _get_page(self, f):  # type: ignore[no-untyped-def]
        m = self.machine
        pfn = m.phys.alloc(0, MOVABLE, f.process.cpu)
        m.direct_map.invalidate_page(pfn)
        self._charge(f, 4096)
        return pfn

    def _put_pages(self, f):  # type: ignore[no-untyped-def]
        for pfn in f.frames:
            if pfn >= 0:
                self.machine.direct_map.restore_page(pfn)
                self.machine.phys.free(pfn, 0, MOVABLE, f.process.cpu)
        self._uncharge(f, f.faulted * 4096)


def _needs_the_kernel() -> None:
    missing = missing_prerequisite()
    if missing is not None:
        pytest.skip(f"the churn sequence needs {missing}")


@pytest.fixture(scope="module")
def freed() -> tuple[object, list[churn.Step], float]:
    _needs_the_kernel()
    return churn.run_kernel()


def test_the_page_model_simulates_the_churn_sequence(
    freed: tuple[object, list[churn.Step], float], capsys: pytest.CaptureFixture[str]
) -> None:
    host, kernel, noise = freed
    result = churn.compare(host, kernel, noise)  # type: ignore[arg-type]
    with capsys.disabled():
        print("\n" + str(result))
    assert result.agrees, str(result)


def test_a_wrong_model_fails_the_same_comparison(
    freed: tuple[object, list[churn.Step], float],
) -> None:
    host, kernel, noise = freed
    wrong = churn.compare(host, kernel, noise, design=MovableSecretPages)  # type: ignore[arg-type]
    assert not wrong.agrees, "a model with movable secret pages passed:\n" + str(wrong)


def test_a_first_region_kept_mapped_sends_the_second_to_fresh_regions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _needs_the_kernel()
    result = churn.churn(keep_first=True)
    with capsys.disabled():
        print("\n" + str(result))
    assert result.agrees, str(result)


def test_design_factories_take_a_machine() -> None:
    # the comparison builds each design on its own model of the machine
    assert MovableSecretPages(Machine()).name.startswith("wrong-model")
