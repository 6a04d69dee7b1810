#!/bin/sh
# Stand-in for the official postgres image's entrypoint (Debian's PostgreSQL 15): on the first
# start it creates the cluster in $PGDATA with $POSTGRES_USER/$POSTGRES_PASSWORD and the database
# $POSTGRES_DB, lets that password in from any host (the official image's pg_setup_hba_conf), then
# runs the command as the postgres user.
set -eu
if [ "${1:-}" = postgres ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
        chown postgres "$pwfile"
        $as_postgres initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
            --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-sync >/dev/null
        rm -f "$pwfile"
        # As the official image: password logins from any host (listen_addresses decides where).
        printf '\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
        echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
            | $as_postgres postgres --single -D "$PGDATA" -j postgres >/dev/null
    fi
    exec $as_postgres "$@"
fi
exec "$@"
