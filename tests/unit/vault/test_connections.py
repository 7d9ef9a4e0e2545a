"""The descriptor budget: every listener's connection cap fits under RLIMIT_NOFILE.

These run :func:`plan` in a forked child whose RLIMIT_NOFILE is set low, so
the test process keeps its own limit.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Callable
from typing import Any

from secretvault.api.errors import FailedPrecondition
from secretvault.vault.config import ServerConfig
from secretvault.vault.connections import (
    MIN_PER_LISTENER,
    grpc_options,
    open_descriptors,
    plan,
)


def _in_child(soft: int, hard: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s answer, computed in a child whose RLIMIT_NOFILE is (soft, hard)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            out = run()
        except BaseException as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        answer: dict[str, Any] = json.loads(f.read())
    os.waitpid(pid, 0)
    return answer


def _plan(config: ServerConfig, listeners: int) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        in_use = open_descriptors()
        try:
            b = plan(config, listeners)
        except FailedPrecondition as e:
            return {"refused": str(e)}
        return {"nofile": b.nofile, "before": b.nofile_before, "per": b.per_listener,
                "total": b.total, "in_use": b.in_use, "before_in_use": in_use,
                "soft_now": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "line": b.describe()}
    return run


def test_the_soft_limit_is_raised_to_the_hard_one_and_the_caps_fit_under_it() -> None:
    got = _in_child(256, 1024, _plan(ServerConfig(max_connections=100_000), 3))
    assert (got["before"], got["nofile"], got["soft_now"]) == (256, 1024, 1024), got
    # lowered from what was asked: three caps and the reserve fit under 1024
    assert got["per"] == (1024 - got["in_use"] - ServerConfig.reserved_descriptors) // 3
    assert got["total"] + got["in_use"] + ServerConfig.reserved_descriptors <= 1024
    assert "lowered from 100,000 to fit" in got["line"]
    assert "raised from 256" in got["line"] and "RLIMIT_NOFILE 1,024" in got["line"]


def test_a_cap_that_fits_is_kept() -> None:
    got = _in_child(4096, 4096, _plan(ServerConfig(max_connections=500), 2))
    assert (got["per"], got["total"]) == (500, 1000), got
    assert "lowered" not in got["line"] and "raised" not in got["line"]


def test_a_limit_too_small_for_the_listeners_is_refused_with_the_fix() -> None:
    got = _in_child(80, 80, _plan(ServerConfig(), 8))
    assert "refused" in got, got
    assert "RLIMIT_NOFILE 80" in got["refused"] and "8 listeners" in got["refused"]
    assert f"fewer than {MIN_PER_LISTENER}" in got["refused"]
    assert "ulimit -n" in got["refused"]


def test_the_grpc_arguments_carry_the_cap_and_the_idle_time() -> None:
    got = _in_child(4096, 4096, lambda: {"options": grpc_options(
        ServerConfig(connection_idle_seconds=2.5),
        plan(ServerConfig(max_connections=7), 1))})
    assert dict(got["options"]) == {"grpc.max_allowed_incoming_connections": 7,
                                   "grpc.max_connection_idle_ms": 2500}
