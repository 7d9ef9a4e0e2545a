"""The PostgreSQL store over TLS with ``sslmode=verify-full``, as production runs it.

A second private PostgreSQL server (``tests/_pg.py``) listens on 127.0.0.1
with TLS on, its certificate issued for ``localhost`` by a test CA.  Replicas
given ``sslmode=verify-full&sslrootcert=CA`` serve and follow each other over
TLS sessions (``pg_stat_ssl`` says so); one given another CA, a host name the
certificate does not carry, or a CA file that is not there refuses to start
with one clear line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import _pg
from tests.integration._support import Pki, cleanup, short_dir
from tests.integration.test_replicas import BOUND, Replica, _until, start_failure


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[tuple[_pg.PgServer, Pki]]:
    why = _pg.unavailable()
    if why is not None:
        pytest.skip(why)
    d = short_dir()
    pki = Pki(d)
    server = _pg.PgServer(tls=pki.issue("postgres", cn="localhost", server=True))
    try:
        yield server, pki
    finally:
        server.close()
        cleanup(d)


def test_replicas_over_verify_full_tls_serve_each_other(
        tls_pg: tuple[_pg.PgServer, Pki]) -> None:
    server, pki = tls_pg
    server.create_database("tls_replicas")
    url = server.tcp_url("tls_replicas", sslmode="verify-full", sslrootcert=pki.ca_path)
    bases = [short_dir(), short_dir()]
    a = Replica(bases[0], url, None, server.env())
    b = Replica(bases[1], url, os.path.join(bases[0], "data", "unseal.key"), server.env())
    try:
        a.stubs.create("over-tls")
        _until(lambda: b.has("over-tls"), timeout=BOUND)
        b.stubs.create("back-over-tls")
        _until(lambda: a.has("back-over-tls"), timeout=BOUND)
        with server.connect("postgres") as conn:
            sessions = conn.execute(  # type: ignore[attr-defined]
                "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a "
                "USING (pid) WHERE a.datname = 'tls_replicas'").fetchall()
        # each replica: its store session and its feed's LISTEN session
        assert len(sessions) >= 4 and all(ssl for ssl, _ in sessions), sessions
        print(f"replicas over TLS (verify-full): {len(sessions)} sessions, "
              f"{sorted({v for _, v in sessions})}")
    finally:
        a.close()
        b.close()
        for base in bases:
            cleanup(base)


def test_a_server_certificate_it_cannot_verify_is_one_clear_line(
        tls_pg: tuple[_pg.PgServer, Pki]) -> None:
    server, pki = tls_pg
    server.create_database("tls_refused")
    other = short_dir()
    try:
        cases = {
            "another CA": (server.tcp_url("tls_refused", sslmode="verify-full",
                                          sslrootcert=Pki(other).ca_path),
                           "no trusted CA signed", "sslrootcert"),
            "another host name": (server.tcp_url("tls_refused", host="127.0.0.1",
                                                 sslmode="verify-full",
                                                 sslrootcert=pki.ca_path),
                                  "names another host", "host name"),
            "no CA file": (server.tcp_url("tls_refused", sslmode="verify-full",
                                          sslrootcert="/nonexistent/ca.pem"),
                           "the CA file to check its TLS certificate with cannot be used",
                           "sslrootcert"),
        }
        for what, (url, expected, fix) in cases.items():
            line = start_failure(what, [url], server.env())
            assert expected in line and fix in line.split("(fix: ")[1], (what, line)
            print(f"{what}: {line}")
    finally:
        cleanup(other)
