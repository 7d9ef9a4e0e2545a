"""The models against the real kernel (root, memfd_secret, x86-64).

Runs :func:`secretvault.backends.model.validate.validate` and prints its figures.  What
it asserts, and the tolerances (documented in ``backends/model/validate.py``
and ``docs/models.md``):

* every check of the result holds: the kernel splits a 2 MiB region only at
  the first touch of a page in it and at most once, as the direct-map model
  says, within a noise allowance measured on idle windows (3x the expected
  splits from other activity, plus one); first touches the kernel did not
  split are within the 2 MiB granules it had at 4 KiB beforehand; the total
  lies within the replay's bounds;
* the first-touch rule was exercised: the run reached regions the kernel
  had never split and it split them (the run goes on until it has);
* the buddy model's placement is reported here (pages per region); it is
  asserted in ``test_model_churn.py``, the same statistic on both sides.
"""

from __future__ import annotations

import pytest

from secretvault.backends.model.validate import (
    ValidationUnavailable,
    missing_prerequisite,
    validate,
)

pytestmark = [pytest.mark.root, pytest.mark.memfd_secret]


def test_direct_map_model_agrees_with_the_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    missing = missing_prerequisite()
    if missing is not None:
        pytest.skip(f"the validation needs {missing}")
    try:
        result = validate()
    except ValidationUnavailable as e:
        pytest.skip(str(e))
    with capsys.disabled():
        print("\n" + str(result))
    if result.split_confirmed == 0:
        # nothing was compared: the direct map's whole regions lie where the
        # kernel did not allocate (a machine whose split regions hold plenty
        # of free memory of every type, after many runs)
        pytest.skip("the validation needs whole 2 MiB regions where the kernel allocates: "
                    "every region the run touched was split before it (reboot for a fresh "
                    "machine)")
    assert result.agrees, str(result)
    # Placement (pages per region) is asserted by test_model_churn.py, the same
    # statistic on both sides over whole allocations: the ratio this test had
    # compared the kernel's median over a few fresh regions with the model's
    # mean, and failed CI under load (2.25x) -- issue 15.
