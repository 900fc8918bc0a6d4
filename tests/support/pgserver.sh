#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: a fresh cluster in a temporary directory, on a free
# local port, with its socket in that directory. Needs Debian's (or any) PostgreSQL server binaries.
#
#   eval "$(tests/support/pgserver.sh start)"    # exports TEST_POSTGRES_URL and TEST_POSTGRES_DIR
#   python -m pytest -q tests/store
#   tests/support/pgserver.sh stop "$TEST_POSTGRES_DIR"
#
# initdb refuses to run as root: as root the cluster belongs to the `postgres` user (Debian's
# package creates it; PGSERVER_USER picks another), as anyone else to the caller. The server
# trusts local connections and keeps nothing durable (fsync off): it holds test data only.
set -euo pipefail

bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then echo "$PG_BINDIR"; return; fi
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir; return
    fi
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$newest" ] && command -v initdb >/dev/null 2>&1; then newest=$(dirname "$(command -v initdb)"); fi
    if [ -z "$newest" ]; then
        echo "pgserver: no PostgreSQL server binaries (apt-get install postgresql, or set PG_BINDIR)" >&2
        exit 1
    fi
    echo "$newest"
}

# run a server command as the cluster's owner
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "${PGSERVER_USER:-postgres}" -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local bin dir port
    bin=$(bindir)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/pgserver.XXXXXX")
    if [ "$(id -u)" -eq 0 ]; then chown "${PGSERVER_USER:-postgres}" "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    for _ in 1 2 3; do  # another process may take the port between choosing and binding it
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
            "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            >/dev/null; then
            echo "export TEST_POSTGRES_DIR=$dir"
            echo "export TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
            return
        fi
    done
    cat "$dir/server.log" >&2
    exit 1
}

stop() {
    local dir=${1:-${TEST_POSTGRES_DIR:-}}
    if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then
        echo "pgserver: usage: $0 stop DIR (the TEST_POSTGRES_DIR that start printed)" >&2
        exit 2
    fi
    as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
