"""What the container tests share: podman, the images, the health check.

``conftest.py`` builds the images once per session (``scripts/build-image``:
the vault's, and PostgreSQL's for the replicas) and skips, naming what is
missing, where podman, runc or root are not there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SECRETVAULT_TEST_IMAGE", "localhost/secretvault:test")
PG_IMAGE = os.environ.get("SECRETVAULT_TEST_PG_IMAGE", "localhost/secretvault-postgres:test")
IMAGE_UID = 10001
#: the PostgreSQL image's postgres user (deploy/postgres/Containerfile)
PG_UID = 10003
START_TIMEOUT_S = 60.0


def missing() -> str | None:
    """What this machine lacks for the container tests, or None."""
    absent = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if absent:
        return (
            f"{' and '.join(absent)} not installed "
            "(run scripts/install-container-deps as root)"
        )
    if os.geteuid() != 0:
        return f"rootful podman needed (running as euid {os.geteuid()})"
    proc = subprocess.run(
        ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if proc.returncode != 0:
        return f"podman does not work here: {proc.stderr.strip()[-300:]}"
    if proc.stdout.strip() != "runc":
        return (
            f"podman uses {proc.stdout.strip()}, not runc "
            "(crun fails here; run scripts/install-container-deps)"
        )
    return None


# --- podman helpers ---------------------------------------------------------------


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
        )
    return proc


def ulimit_args(memlock: int | None = None) -> list[str]:
    """Explicit ulimits: any ``--ulimit`` replaces podman's defaults, whose
    nofile (1048576) is above this root's hard limit; without
    CAP_SYS_RESOURCE runc then fails with "error setting rlimit type 7"."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else min(nofile, 1048576)
    nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    args = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
    if memlock is not None:
        args += ["--ulimit", f"memlock={memlock}:{memlock}"]
    return args


def _load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "secretvault_deploy_healthcheck", REPO / "deploy" / "healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load_healthcheck()


@dataclass(frozen=True)
class Build:
    image: str
    seconds: float
    log: str


def build_image(target: str, image: str) -> Build:
    """``scripts/build-image TARGET`` (incremental: cached bases and
    wheelhouse; the vault's project wheel is rebuilt every time).  Raises
    AssertionError with the script's output when it fails."""
    variable = "SECRETVAULT_PG_IMAGE" if target == "postgres" else "SECRETVAULT_IMAGE"
    env = dict(os.environ, PYTHON=sys.executable, **{variable: image})
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "scripts" / "build-image"), target],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise AssertionError(
            f"scripts/build-image {target} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    print(f"\nscripts/build-image {target}: {seconds:.1f} s\n{proc.stderr}")
    return Build(image, seconds, proc.stderr)


def verify_independently(public_raw: bytes, message: bytes, token: bytes) -> None:
    """Ed25519 verification with ``cryptography``, not through the vault."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from secretvault.clients.local import signature_payload

    _, raw = signature_payload(token)
    Ed25519PublicKey.from_public_bytes(public_raw).verify(raw, message)  # raises if bad
