"""Connecting to the PostgreSQL store: the connection string, the checked session,
the schema, and what each failure says (never the password).

:class:`Connector` makes every session of :class:`~secretvault.vault.store_pg.PostgreSQLStore`
and of its follower's wake-up: ``synchronous_commit`` set on the session and
checked, with the server's ``fsync``; the start failures each get one line
(:class:`StoreRefused` with its fix, or :class:`StoreUnavailable`), and
:func:`describe` is the store as every message names it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from secretvault.api.errors import (
    FailedPrecondition,
    InvalidArgument,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    VaultError,
)

__all__ = ["CHANNEL", "CONNECT_TIMEOUT", "SCHEMA_LOCK", "SCHEMA_VERSION", "STORE_CALL_SECONDS",
           "Connector", "describe", "is_postgresql"]

SCHEMA_VERSION = 1
CHANNEL = "secretvault_feed"
#: seconds to wait for a connection (libpq's connect_timeout, unless the URL sets one)
CONNECT_TIMEOUT = 5
#: seconds a call to the store may take before its session is cut and the call
#: fails with StoreUnavailable: a server that hangs (a frozen host, a partition
#: that drops packets) closes nothing, and without a bound a change would wait
#: on its socket for ever, holding every later change up behind it
STORE_CALL_SECONDS = 10
#: the server's own bound on a statement and on a lock wait, a little inside the
#: call's: a server that answers says why (a lock timeout, a statement timeout)
#: before the call is cut, and its session is kept
SERVER_STATEMENT_SECONDS = 8
#: the server ends a session left idle inside a transaction this long: a replica
#: that freezes mid-change holds the feed's row lock, which orders every writer,
#: for at most this long, so the others' changes (waiting on that lock, within
#: their own bound) go through.  A change's statements follow one another at
#: once; reading the whole store (``load``) sets its own, longer bounds
IDLE_IN_TRANSACTION_SECONDS = 5
#: the bound for reading the whole store (at start, or after the feed was pruned
#: past a process), which grows with it
LOAD_SECONDS = 300
#: the server-side bounds each session sets, in seconds, where neither the URL's
#: options (``options=-c lock_timeout=...``) nor the role's or database's settings
#: set one (a setting of 0, "off", is replaced too)
SESSION_BOUNDS = {"statement_timeout": SERVER_STATEMENT_SECONDS,
                  "lock_timeout": SERVER_STATEMENT_SECONDS,
                  "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_SECONDS}
#: libpq's TCP keepalive settings, unless the URL sets its own (ignored on a Unix socket)
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
              "keepalives_count": 3}
#: the advisory lock that makes creating the schema one process's job
SCHEMA_LOCK = 0x5EC12E7
_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS secretvault;
CREATE TABLE IF NOT EXISTS secretvault.schema_version (
    id      integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS secretvault.meta (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS secretvault.keys (
    name                   text PRIMARY KEY,
    type                   text NOT NULL,
    created                double precision NOT NULL,
    labels                 text NOT NULL,
    primary_version        bigint NOT NULL,
    min_decryption_version bigint NOT NULL,
    row_mac                bytea
);
CREATE TABLE IF NOT EXISTS secretvault.key_versions (
    name       text NOT NULL REFERENCES secretvault.keys(name) ON DELETE CASCADE,
    version    bigint NOT NULL,
    created    double precision NOT NULL,
    public_key bytea,
    nonce      bytea NOT NULL,
    sealed     bytea NOT NULL,
    created_by text,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS secretvault.feed (
    id  integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO secretvault.feed (id, seq) VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS secretvault.changes (
    seq     bigint PRIMARY KEY,
    kind    text NOT NULL,
    name    text NOT NULL,
    version bigint,
    at      double precision NOT NULL
);
"""


def is_postgresql(store: str) -> bool:
    """Whether a ``--store`` value names PostgreSQL (a URL, or a conninfo string)."""
    return store.startswith(("postgresql://", "postgres://")) or "=" in store


def _params(store: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(store)
    except psycopg.ProgrammingError:
        # libpq's message quotes part of the string, which may be the password
        raise InvalidArgument(
            "--store is not a PostgreSQL connection string: give a URL "
            "(postgresql://USER@HOST:PORT/DATABASE) or libpq's key=value form "
            "('host=HOST dbname=DATABASE user=USER')") from None


def describe(store: str) -> str:
    """The store as messages name it: a URL with no password (nor any other secret)."""
    p = _params(store)
    host = str(p.get("host") or p.get("hostaddr") or "")
    user = f"{p['user']}@" if p.get("user") else ""
    port = f":{p['port']}" if p.get("port") else ""
    db = str(p.get("dbname") or "")
    if host.startswith("/"):  # a Unix socket directory
        return f"postgresql://{user}/{db}?host={host}" + (f"&port={p['port']}" if port else "")
    return f"postgresql://{user}{host}{port}/{db}"


class Connector:
    """Makes checked sessions to one store; names it without its password."""

    def __init__(self, store: str) -> None:
        self._params = _params(store)
        self._params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        # over TCP, a server that vanished without a reset (a partition, a
        # failover) is noticed in about 11 s instead of the kernel's hours,
        # by the follower's LISTEN session as much as by the writer's
        for key, value in KEEPALIVES.items():
            self._params.setdefault(key, value)
        self._secret = str(self._params.get("password") or "")
        self.name = describe(store)

    def connect(self) -> psycopg.Connection[Any]:
        """A new session, checked: synchronous_commit on, fsync on; the server's
        bounds (:data:`SESSION_BOUNDS`) set where the URL left them off."""
        try:
            conn = psycopg.connect(**self._params, autocommit=True)
        except psycopg.OperationalError as e:
            raise self._connect_error(e) from None
        try:
            with self.bounded(conn):
                conn.execute("SET synchronous_commit = on")
                for setting, seconds in SESSION_BOUNDS.items():
                    (value,) = _one(conn.execute(f"SHOW {setting}"))
                    if value == "0":  # off: libpq's options= did not set it
                        conn.execute(f"SET {setting} = '{seconds}s'")
                (sync,) = _one(conn.execute("SHOW synchronous_commit"))
                (fsync,) = _one(conn.execute("SHOW fsync"))
        except psycopg.Error as e:
            conn.close()
            raise self.unavailable(e) from None
        if conn.closed:  # cut as its set-up ended
            raise self.hung(STORE_CALL_SECONDS)
        if sync != "on" or fsync != "on":
            conn.close()
            raise FailedPrecondition(
                f"the key store {self.name} does not commit durably (synchronous_commit="
                f"{sync}, fsync={fsync}): a change could be acknowledged and then lost; "
                "turn fsync on in the server's configuration")
        return conn

    @contextmanager
    def bounded(self, conn: psycopg.Connection[Any],
                seconds: float = STORE_CALL_SECONDS) -> Iterator[None]:
        """Run one call on ``conn`` within ``seconds``: past them, the session's
        socket is shut down, so the call fails at once (a lost connection) and
        the next call connects again; the failure then says the store hung.

        One timer per call (a thread that waits, then ends): a thread kept for
        the store's life would be made before ``serve`` drops its capabilities,
        and keep them (Linux capabilities are per thread).
        """
        call = _Call(conn)
        timer = threading.Timer(seconds, call.cut)
        timer.daemon = True
        timer.start()
        try:
            yield
        except psycopg.Error:
            if call.was_cut:  # (what libpq says is only "connection closed")
                raise self.hung(seconds) from None
            raise
        finally:
            timer.cancel()
            if call.end():
                # cut as the call ended: its answer stands, the session does not
                conn.close()

    def hung(self, seconds: float) -> StoreUnavailable:
        return StoreUnavailable(f"the key store {self.name} did not answer within "
                                f"{seconds:g} s; keys already loaded keep serving")

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        return text.replace(self._secret, "***") if self._secret else text

    def _connect_error(self, e: psycopg.OperationalError) -> VaultError:
        text = self._clean(str(e))
        user = self._params.get("user") or "(libpq's default user)"
        error: VaultError
        if "authentication failed" in text or "no password supplied" in text:
            error = StoreRefused(
                f"the key store {self.name} refused user {user}: authentication failed",
                "give the right password with PGPASSWORD or a PGPASSFILE (or in the URL), "
                "or the user the server expects")
        elif "does not match host name" in text:
            error = StoreRefused(
                f"the key store {self.name} presented a TLS certificate that names another "
                f"host ({_after_failed(text)})",
                "connect by a host name the server's certificate carries (sslmode="
                "verify-full checks it)")
        elif "root certificate file" in text:
            error = StoreRefused(
                f"the key store {self.name}: the CA file to check its TLS certificate with "
                f"cannot be used ({_after_failed(text).split(' Either')[0]})",
                "give sslrootcert=FILE in the URL: a PEM file of the CA that issued the "
                "server's certificate, readable by the vault's user")
        elif "certificate has expired" in text:
            error = StoreRefused(
                f"the key store {self.name} presented a TLS certificate that has expired "
                f"({_after_failed(text)})",
                "renew the server's certificate (or correct this host's clock)")
        elif any(s in text for s in _UNTRUSTED):
            error = StoreRefused(
                f"the key store {self.name} presented a TLS certificate that no trusted CA "
                f"signed ({_after_failed(text)})",
                "give sslrootcert=FILE in the URL: the CA that issued the server's "
                "certificate (sslmode=verify-full checks the chain and the host name)")
        elif "does not exist" in text and "database" in text:
            db = self._params.get("dbname") or user
            error = StoreRefused(
                f"the key store {self.name}: the database {db} does not exist",
                f"create it (createdb {db}, or CREATE DATABASE), owned by the vault's user")
        else:
            error = StoreUnavailable(f"cannot reach the key store {self.name}: {text}")
        return error

    def unavailable(self, e: psycopg.Error) -> StoreUnavailable:
        return StoreUnavailable(
            f"the key store {self.name} is unavailable ({self._clean(str(e))[:300]}); "
            "keys already loaded keep serving")

    def ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        try:
            with conn.transaction():
                # one process creates the tables; the others find them made
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                row = conn.execute(
                    "SELECT to_regclass('secretvault.schema_version') IS NOT NULL, "
                    "to_regclass('secretvault.keys') IS NOT NULL").fetchone()
                has_version, has_keys = row if row else (False, False)
                version = None
                if has_version:
                    got = conn.execute(
                        "SELECT version FROM secretvault.schema_version").fetchone()
                    version = None if got is None else int(got[0])
                if version is None and not has_keys:
                    conn.execute(_SCHEMA)
                    conn.execute("INSERT INTO secretvault.schema_version VALUES (1, %s) "
                                 "ON CONFLICT (id) DO NOTHING", (SCHEMA_VERSION,))
                    version = SCHEMA_VERSION
        except psycopg.Error as e:
            raise self.unavailable(e) if is_connection(e) else StoreError(
                f"cannot create the key store's tables in {self.name}: "
                f"{self._clean(str(e))}") from None
        if version == SCHEMA_VERSION:
            return
        older = (version or 0) < SCHEMA_VERSION
        shown = "none" if version is None else str(version)
        raise StoreRefused(
            f"the key store {self.name} has schema version {shown}, "
            + ("older than" if older else "newer than") + f" this vault's {SCHEMA_VERSION}",
            "no migration from it exists: restore the database from a backup made by this "
            "version, or point --store at a new database" if older else
            "start a vault of the version that wrote it, or point --store at a new database")



#: what libpq (OpenSSL) says of a server certificate it cannot trust
_UNTRUSTED = ("certificate verify failed", "signature failure", "unable to get local issuer",
              "self-signed certificate", "self signed certificate")


def _after_failed(text: str) -> str:
    """libpq's reason, without its 'connection to server at ... failed:' preamble."""
    return text.rsplit(" failed: ", 1)[-1][:200]


class _Call:
    """One bounded call on a session: its timer's cut, and its end, take turns, so
    a cut can never reach the session (nor a descriptor number reused after it
    closed) once the call has ended."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._ended = False
        self.was_cut = False

    def cut(self) -> None:
        """Shut the session's socket down: the call blocked on it fails at once."""
        with self._lock:
            if self._ended:
                return
            self.was_cut = True
            try:
                fd = os.dup(self._conn.pgconn.socket)
            except (psycopg.OperationalError, OSError):
                return  # closed meanwhile
            try:
                # a duplicate of the descriptor: shutdown acts on the socket both share
                with socket.socket(fileno=fd) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                os.close(fd)  # not a socket (any more): socket() did not take it

    def end(self) -> bool:
        """The call is over: no cut from here on.  Whether it was cut."""
        with self._lock:
            self._ended = True
            return self.was_cut


def _one(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return tuple(row)


def is_connection(e: psycopg.Error) -> bool:
    """A lost or refused connection (rather than a statement the server refused)."""
    return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError) or (
        e.sqlstate is not None and e.sqlstate[:2] in ("08", "57"))

