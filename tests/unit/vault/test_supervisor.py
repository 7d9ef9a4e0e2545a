"""The supervisor's own parts: the shared TCP port, the workers' sockets, its summary."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from secretvault.api.errors import InvalidArgument
from secretvault.vault.app import VaultConfig
from secretvault.vault.config import ServerConfig, WorkerSlot
from secretvault.vault.supervisor import Supervisor


def _config(tmp_path: Path, **changes: object) -> ServerConfig:
    vault = VaultConfig(data_dir=str(tmp_path / "data"), socket=str(tmp_path / "run" / "s"))
    given: dict[str, object] = {"worker_processes": 2, **changes}
    return ServerConfig(vault=vault, **given)  # type: ignore[arg-type]


def test_port_zero_is_resolved_once_and_every_worker_can_bind_it(tmp_path: Path) -> None:
    sup = Supervisor(_config(tmp_path))
    try:
        address = sup._reserve_port("127.0.0.1:0")
        assert sup.tcp_port and address == f"127.0.0.1:{sup.tcp_port}"
        # the reservation is bound, not listening: nothing connects to it ...
        probe = socket.socket()
        with pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", sup.tcp_port))
        probe.close()
        # ... and sockets with SO_REUSEPORT (as grpc makes each worker's) share the port
        workers = []
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", sup.tcp_port))
            s.listen()
            workers.append(s)
        # but a socket without it cannot take the port
        other = socket.socket()
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", sup.tcp_port))
        other.close()
        for s in workers:
            s.close()
    finally:
        sup.stop()


def test_each_worker_has_its_own_private_sockets(tmp_path: Path) -> None:
    a, b = WorkerSlot(0, 2, "/d", 1), WorkerSlot(1, 2, "/d", 1)
    assert {a.socket(0), a.socket(1), a.metrics_socket, b.socket(0), b.socket(1),
            b.metrics_socket} == {"/d/w0-0.sock", "/d/w0-1.sock", "/d/w0-metrics.sock",
                                  "/d/w1-0.sock", "/d/w1-1.sock", "/d/w1-metrics.sock"}


def test_the_private_directory_is_0700_and_goes_with_the_supervisor(tmp_path: Path) -> None:
    sup = Supervisor(_config(tmp_path))
    directory = Path(sup.directory)
    assert directory.stat().st_mode & 0o777 == 0o700
    sup.stop()
    assert not directory.exists()


def test_workers_out_of_range_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--workers"):
        Supervisor(_config(tmp_path, worker_processes=1000))


def test_the_summary_names_every_worker(tmp_path: Path) -> None:
    sup = Supervisor(_config(tmp_path))
    try:
        sup.workers[0].summary = "secretvault is serving\n  store        x"
        text = sup.summary()
        assert text.splitlines()[0] == "secretvault is serving"
        assert "2 processes (pids 0, 0; supervisor" in text.splitlines()[1]
    finally:
        sup.stop()


def test_the_tracer_exit_status_is_the_servers() -> None:
    from secretvault.vault import server, supervisor

    assert supervisor.EXIT_TRACED == server.EXIT_TRACED


def test_the_public_socket_is_guarded_and_its_relay_capped(tmp_path: Path) -> None:
    import stat

    sup = Supervisor(_config(tmp_path, max_connections=10))
    try:
        sup._bind()
        path = tmp_path / "run" / "s"
        assert stat.S_ISSOCK(path.stat().st_mode) and path.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
        assert sup.relay.max_connections == 10
        assert sup.relay.connections() == {f"unix:{path}": [0, 0]}
    finally:
        sup.stop()
    assert not path.exists()
