"""Fixtures of the container tests: podman probed once a module, the
images built once a session (see ``_podman.py``)."""

from __future__ import annotations

import pytest

from tests.container._podman import IMAGE, PG_IMAGE, Build, build_image, missing


@pytest.fixture(scope="module", autouse=True)
def _container_runtime() -> None:
    """Probe podman only when a container test runs, not at collection
    (``podman info`` is slow, and ``-m 'not container'`` should not pay it)."""
    why = missing()
    if why is not None:
        pytest.skip(f"container tests need podman with runc: {why}")


@pytest.fixture(scope="session")
def image_build() -> Build:
    """The vault's image, built with scripts/build-image."""
    try:
        return build_image("vault", IMAGE)
    except AssertionError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def pg_image_build() -> Build:
    """The PostgreSQL image of the replicated deployments (scripts/build-image
    postgres): its base is cached like the vault's, the image is two layers."""
    try:
        return build_image("postgres", PG_IMAGE)
    except AssertionError as e:
        pytest.fail(str(e))
