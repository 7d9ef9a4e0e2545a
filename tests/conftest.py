"""Shared fixtures and the auto-skip for the ``root`` and ``memfd_secret`` markers.

A test that needs something this machine lacks is skipped with a reason that
names what is missing (never a silent pass): ``root`` needs euid 0,
``memfd_secret`` needs the syscall to work here (the probe's own error says
why it does not: old kernel, ``secretmem.enable=0``, seccomp, gVisor...).
"""

from __future__ import annotations

import functools
import os

import pytest


@functools.cache
def memfd_secret_unavailable() -> str | None:
    """Why memfd_secret(2) cannot be used here, or None when it can.

    The probe creates one secret file and closes it without mapping it, so it
    costs no memlock and leaves nothing behind.
    """
    from secretvault.api.errors import VaultError
    from secretvault.backends import _sys

    try:
        fd = _sys.memfd_secret()
    except VaultError as e:
        return str(e)
    os.close(fd)
    return None


def memfd_secret_available() -> bool:
    return memfd_secret_unavailable() is None


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("root") is not None and not is_root():
            item.add_marker(pytest.mark.skip(reason=f"needs root; running as euid {os.geteuid()}"))
        if item.get_closest_marker("memfd_secret") is not None:
            why = memfd_secret_unavailable()
            if why is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs memfd_secret(2): {why}"))
