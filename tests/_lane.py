"""Which backend the test servers run on: the lane, and why.

The integration tests' servers (in-process and child) run on memfd_secret
where this machine has it, and on the ``page-model`` backend where it does
not, so the server's behaviour is still covered there.  Either lane can be
asked for: ``pytest --server-backend page-model`` (or the environment
variable :data:`ENV`, which child processes inherit).  The choice is printed
in pytest's header; a test that asserts what only a memfd_secret server
shows (protection ``secretmem``, the kernel's refusals, direct-map splits)
carries the ``memfd_secret`` marker and is skipped on the page-model lane.
"""

from __future__ import annotations

import functools
import os

ENV = "SECRETVAULT_TEST_SERVER_BACKEND"
AUTO = "auto"
MEMFD_SECRET = "memfd_secret"
PAGE_MODEL = "page-model"
CHOICES = (AUTO, MEMFD_SECRET, PAGE_MODEL)

#: what a server on each lane's backend reports: its protection, and where
#: its direct-map figures come from
PROTECTION = {MEMFD_SECRET: "secretmem", PAGE_MODEL: "model"}
DIRECT_MAP_SOURCE = {MEMFD_SECRET: "kernel", PAGE_MODEL: "model"}


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


def asked() -> str:
    """The lane asked for (:data:`AUTO` unless :data:`ENV` names one)."""
    value = os.environ.get(ENV, AUTO)
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def server_backend() -> str:
    """The backend the test servers run on: the lane asked for, else the best here."""
    value = asked()
    if value != AUTO:
        return value
    return MEMFD_SECRET if memfd_secret_unavailable() is None else PAGE_MODEL


def describe() -> str:
    """One line saying which lane and why, for pytest's header."""
    backend = server_backend()
    why = memfd_secret_unavailable()
    if backend == MEMFD_SECRET:
        return "integration servers run on memfd_secret"
    if why is not None:
        return (
            "integration servers run on page-model: memfd_secret is missing on this "
            f"machine ({why})"
        )
    return (
        f"integration servers run on page-model: asked for ({ENV}={PAGE_MODEL} or "
        "--server-backend page-model); tests marked memfd_secret are skipped"
    )
