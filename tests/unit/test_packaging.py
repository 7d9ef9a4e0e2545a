"""pyproject.toml states the licence in the form setuptools keeps accepting.

setuptools deprecates the ``project.license`` table (``{ text = ... }``), to
stop working in February 2027: the licence is an SPDX expression string
(PEP 639), and reading the configuration warns of nothing.
"""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_license_is_an_spdx_expression_string() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert isinstance(project["license"], str), project["license"]
    from packaging.licenses import canonicalize_license_expression

    assert canonicalize_license_expression(project["license"]) == project["license"]


def test_setuptools_reads_the_metadata_without_a_deprecation_warning() -> None:
    from setuptools.config import pyprojecttoml
    from setuptools.dist import Distribution

    dist = Distribution()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyprojecttoml.apply_configuration(dist, str(PYPROJECT))
    license_warnings = [str(w.message) for w in caught if "license" in str(w.message).lower()]
    assert not license_warnings, license_warnings[0]
    assert dist.metadata.license_expression == "Apache-2.0"
