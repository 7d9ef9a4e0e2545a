"""A private, real PostgreSQL server for the tests.

:class:`PgServer` initdb's a data directory under /tmp, starts ``postgres``
on a private Unix socket directory (no TCP), with password authentication
(scram-sha-256) for its one superuser, and stops it when asked.  As root it
runs as the ``postgres`` user (root cannot run postgres); otherwise as the
caller.  The server binaries are Debian's (``scripts/install-postgres``,
called by ``scripts/test`` as root); :func:`unavailable` says what is
missing when they are not there, for a skip that names it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator

USER = "vault"
PASSWORD = "pg-test-password"
PORT = 5432  # only names the socket file: the directory is private


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: [int(x) for x in p.split("/")[4].split(".") if x.isdigit()])
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("pg_ctl")
    return os.path.dirname(on_path) if on_path else None


def unavailable() -> str | None:
    """Why no private PostgreSQL can start here (None: it can)."""
    if _bin_dir() is None:
        return ("needs the PostgreSQL server binaries (Debian's postgresql: run "
                "scripts/install-postgres as root)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "needs the postgres user to run the server as (scripts/install-postgres)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "needs psycopg (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One postgres on ``base/socket``; :meth:`close` stops it and removes its files."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        """With ``tls`` (certificate, key: PEM files), the server also listens on
        127.0.0.1, at :attr:`port`, with TLS on (``ssl=on``), for :meth:`tcp_url`."""
        bindir = _bin_dir()
        assert bindir is not None, unavailable()
        self._bin = bindir
        self.port = PORT if tls is None else _free_port()
        self.base = tempfile.mkdtemp(prefix="sv-pg-", dir="/tmp")
        self.data = os.path.join(self.base, "data")
        self.socket_dir = os.path.join(self.base, "socket")
        self.log = os.path.join(self.base, "postgres.log")
        os.makedirs(self.socket_dir)
        pwfile = os.path.join(self.base, "pwfile")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        # the serving vault drops its capabilities (CAP_DAC_OVERRIDE too): the
        # socket's directory must be reachable by anyone
        os.chmod(self.base, 0o755)
        os.chmod(self.socket_dir, 0o755)
        open(self.log, "w").close()
        owned = [self.base, self.socket_dir, pwfile, self.log]
        self._tls: tuple[str, str] | None = None
        if tls is not None:
            # postgres reads them itself, and refuses a key others may read
            self._tls = (os.path.join(self.base, "server.pem"),
                         os.path.join(self.base, "server.key"))
            for src, dst in zip(tls, self._tls, strict=True):
                shutil.copyfile(src, dst)
                os.chmod(dst, 0o600)
            owned += self._tls
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in owned:
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}",
                  "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                  "--no-instructions", "-E", "UTF8", "--locale=C")
        os.unlink(pwfile)
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [os.path.join(self._bin, tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp", check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()} "
                               f"{self.server_log()[-2000:]}")

    def server_log(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self) -> None:
        opts = (f"-k {self.socket_dir} -c listen_addresses='' -p {self.port} "
                "-c fsync=on -c synchronous_commit=on -c max_connections=200")
        if self._tls is not None:
            opts = opts.replace("listen_addresses=''", "listen_addresses=127.0.0.1") + (
                f" -c ssl=on -c ssl_cert_file={self._tls[0]} -c ssl_key_file={self._tls[1]}")
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", opts,
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def processes(self) -> list[int]:
        """The postmaster's pid and its children's (every backend, every worker)."""
        with open(os.path.join(self.data, "postmaster.pid"), encoding="ascii") as f:
            postmaster = int(f.readline())
        pids = [postmaster]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue  # gone meanwhile
            if ppid == postmaster:
                pids.append(int(entry))
        return pids

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server: it stops answering without closing a connection
        (a host that hangs, a partition); :meth:`thaw` with what this returns."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def conninfo(self, dbname: str = "postgres", *, password: bool = False) -> str:
        """A libpq URL for ``dbname`` (the password only when asked: prefer PGPASSWORD)."""
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, dbname: str, host: str = "localhost", **params: str) -> str:
        """A libpq URL for ``dbname`` over TCP (a server started with ``tls``)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{USER}@{host}:{self.port}/{dbname}" + (f"?{query}" if query else "")

    def env(self) -> dict[str, str]:
        """The environment that authenticates a client (libpq's PGPASSWORD)."""
        return {"PGPASSWORD": PASSWORD}

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL (without the password)."""
        import psycopg

        with psycopg.connect(self.conninfo(password=True), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)

    @contextlib.contextmanager
    def connect(self, dbname: str) -> Iterator[object]:
        import psycopg

        with psycopg.connect(self.conninfo(dbname, password=True), autocommit=True) as conn:
            yield conn

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
