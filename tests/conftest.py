"""The test lanes, and the auto-skip for the ``root`` and ``memfd_secret`` markers.

A test that needs something this machine lacks is skipped with a reason that
names what is missing (never a silent pass): ``root`` needs euid 0,
``memfd_secret`` needs the syscall to work here (the probe's own error says
why it does not: old kernel, ``secretmem.enable=0``, seccomp, gVisor...).

The integration servers run on memfd_secret, or on page-model where it is
missing or when ``--server-backend page-model`` asks (``tests/_lane.py``);
the header says which.  On the page-model lane an integration test marked
``memfd_secret`` (one that asserts what only memfd_secret shows) is skipped,
saying so, as it would be on a machine without memfd_secret.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _lane, _pg

INTEGRATION = Path(__file__).resolve().parent / "integration"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[_pg.PgServer]:
    """A private PostgreSQL server for the session (``tests/_pg.py``); skipped,
    naming what is missing, where none can run."""
    why = _pg.unavailable()
    if why is not None:
        pytest.skip(why)
    server = _pg.PgServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: _pg.PgServer, request: pytest.FixtureRequest,
           monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty database on the session's server; PGPASSWORD set for libpq."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    for k, v in pg_server.env().items():
        monkeypatch.setenv(k, v)
    return pg_server.create_database(name)


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server-backend",
        choices=_lane.CHOICES,
        default=None,
        help=f"backend of the integration tests' servers: memfd_secret, page-model, or "
        f"auto (the default, or ${_lane.ENV}): memfd_secret where this machine has it",
    )


def pytest_configure(config: pytest.Config) -> None:
    asked = config.getoption("--server-backend")
    if asked is not None:
        os.environ[_lane.ENV] = asked
    # the environment carries the lane, resolved, to _support and to every
    # child process (create_loop, servers started by hand)
    try:
        os.environ[_lane.ENV] = _lane.server_backend()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    why = _lane.memfd_secret_unavailable()
    if _lane.server_backend() == _lane.MEMFD_SECRET and why is not None:
        raise pytest.UsageError(
            f"integration servers cannot run on memfd_secret: it is missing on this "
            f"machine ({why}); use --server-backend page-model or auto"
        )


def pytest_report_header(config: pytest.Config) -> str:
    return _lane.describe()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    page_model_lane = _lane.server_backend() == _lane.PAGE_MODEL
    why = _lane.memfd_secret_unavailable()
    for item in items:
        if item.get_closest_marker("root") is not None and not is_root():
            item.add_marker(pytest.mark.skip(reason=f"needs root; running as euid {os.geteuid()}"))
        if item.get_closest_marker("memfd_secret") is None:
            continue
        if why is not None:
            item.add_marker(pytest.mark.skip(reason=f"needs memfd_secret(2): {why}"))
        elif page_model_lane and item.path.is_relative_to(INTEGRATION):
            item.add_marker(
                pytest.mark.skip(
                    reason="needs memfd_secret: this run is on the page-model lane "
                    f"({_lane.ENV}={_lane.PAGE_MODEL} or --server-backend page-model), "
                    "which stands for a machine without it"
                )
            )
