#!/bin/sh
# PostgreSQL for secretvault's replicas: the `replicated` compose profile and
# the tests' Kubernetes pod (in production PostgreSQL is an operator's, such
# as CloudNativePG, or a cloud's; deploy/README.md, "Replicas", says what the
# vault needs from it, and this script does exactly that):
#
#   * one database ($POSTGRES_DB) owned by one login role ($POSTGRES_USER),
#     whose password is read from a file ($POSTGRES_PASSWORD_FILE, a compose
#     secret or a Kubernetes Secret), never from the command line or the
#     environment; it is sent once, over the local socket, at initialisation;
#   * TCP only with TLS and SCRAM-SHA-256, for that role on that database;
#     the superuser only over the local socket (peer);
#   * synchronous_commit on: a change the vault acknowledges has reached disk.
#
# TLS: $POSTGRES_TLS_DIR/tls.crt and tls.key (a Kubernetes TLS Secret's
# names) when mounted, else a key and self-signed certificate made once per
# data directory (clients then connect with sslmode=require: encrypted, not
# authenticated; give a real certificate and sslmode=verify-full in
# production).
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data/pg15}
DB=${POSTGRES_DB:-secretvault}
ROLE=${POSTGRES_USER:-secretvault}
POSTGRES_PASSWORD_FILE=${POSTGRES_PASSWORD_FILE:-/run/secrets/pg_password}
TLS_DIR=${POSTGRES_TLS_DIR:-/etc/postgresql/tls}
MAX_CONNECTIONS=${POSTGRES_MAX_CONNECTIONS:-100}
SOCKETS=/run/postgresql
export PGDATA POSTGRES_PASSWORD_FILE

log() { printf 'secretvault-postgres: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The names go into SQL and pg_hba.conf as they are: keep them plain.
for name in "$DB" "$ROLE"; do
    case "$name" in
        '' | [!a-z_]* | *[!a-z0-9_]*)
            die "POSTGRES_DB and POSTGRES_USER must be lower-case letters, digits and _ ('$name')" ;;
    esac
done
case "$MAX_CONNECTIONS" in
    '' | *[!0-9]*) die "POSTGRES_MAX_CONNECTIONS must be a number ('$MAX_CONNECTIONS')" ;;
esac

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -r "$POSTGRES_PASSWORD_FILE" ] \
        || die "cannot read the role's password file $POSTGRES_PASSWORD_FILE (POSTGRES_PASSWORD_FILE)"
    [ -n "$(head -c 1 "$POSTGRES_PASSWORD_FILE")" ] \
        || die "the role's password file $POSTGRES_PASSWORD_FILE is empty"
    log "initialising $PGDATA (database $DB, role $ROLE)"
    initdb --pgdata="$PGDATA" --username=postgres --auth-local=peer --auth-host=reject \
        --encoding=UTF8 --no-locale --data-checksums >/dev/null
    # A server on the local socket only, to make the role and the database.
    pg_ctl --pgdata="$PGDATA" --wait --silent \
        -o "-c listen_addresses='' -c unix_socket_directories=$SOCKETS" start
    # psql reads the password itself (the backquote runs `cat`), so it is on
    # no command line; the server stores only its SCRAM verifier.
    psql -X -q -v ON_ERROR_STOP=1 -h "$SOCKETS" -U postgres -d postgres \
        -v role="$ROLE" -v db="$DB" <<'SQL'
\set password `cat "$POSTGRES_PASSWORD_FILE"`
SET password_encryption = 'scram-sha-256';
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'password';
\unset password
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
\connect :"db"
-- the vault creates a schema of its own (secretvault), as the database's
-- owner may; nobody needs the public one
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
    pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
fi

if [ -s "$TLS_DIR/tls.crt" ] && [ -s "$TLS_DIR/tls.key" ]; then
    cert=$TLS_DIR/tls.crt key=$TLS_DIR/tls.key
else
    cert=$PGDATA/server.crt key=$PGDATA/server.key
    if [ ! -s "$key" ]; then
        log "no certificate in $TLS_DIR: making a self-signed one for this data directory"
        (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -nodes -days 3650 -subj "/CN=$(cat /proc/sys/kernel/hostname)" \
            -keyout "$key" -out "$cert" 2>/dev/null)
    fi
fi

# Rewritten at every start, so it always says what this script promises.
cat >"$PGDATA/pg_hba.conf" <<EOF
# Written by secretvault-postgres at every start.
# TYPE  DATABASE  USER      ADDRESS  METHOD
local   all       postgres           peer
hostssl $DB $ROLE all      scram-sha-256
# anything else (plain-text TCP, another role or database) is refused
EOF

exec postgres \
    -c listen_addresses='*' \
    -c port=5432 \
    -c unix_socket_directories="$SOCKETS" \
    -c max_connections="$MAX_CONNECTIONS" \
    -c ssl=on -c ssl_cert_file="$cert" -c ssl_key_file="$key" \
    -c password_encryption=scram-sha-256 \
    -c synchronous_commit=on \
    -c fsync=on \
    -c full_page_writes=on
