#!/usr/bin/env bash
# Runs the whole API suite (tests/api) on PostgreSQL: starts a throwaway PostgreSQL
# (initdb in a temporary directory, 127.0.0.1 on a free port, its unix socket in that
# directory; as the `postgres` user when run as root), runs
# `cargo test --locked --test api` with ZEROSTATE_TEST_POSTGRES_URL set (each spawned
# app then gets a fresh database), and stops the server and removes the directory on
# exit, whatever happens. Extra arguments go to `cargo test` (e.g. a test filter).
#
# Needs PostgreSQL's server programs (Debian: apt-get install postgresql; override the
# directory with PG_BIN=/usr/lib/postgresql/NN/bin).
set -euo pipefail

cd "$(dirname "$0")/.."

PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
if [[ -z "$PG_BIN" || ! -x "$PG_BIN/postgres" ]]; then
    echo "test-postgres: PostgreSQL server programs not found (set PG_BIN)" >&2
    exit 1
fi

# Every app gets its own database (about 8 MB each, over a gigabyte for the suite): on
# a roomy tmpfs they cost no disk writes and vanish at once at the end.
parent="${TMPDIR:-/tmp}"
if [[ -w /dev/shm ]] && (( $(df --output=avail -k /dev/shm | tail -n 1) > 4 * 1024 * 1024 )); then
    parent=/dev/shm
fi
dir="$(mktemp -d -p "$parent" zerostate-pg-XXXXXX)"
as_owner=()
if [[ "$(id -u)" == 0 ]]; then
    # PostgreSQL refuses to run as root.
    chown postgres: "$dir"
    as_owner=(runuser -u postgres --)
fi

pg_pid=""
cleanup() {
    if [[ -n "$pg_pid" ]] && kill -0 "$pg_pid" 2>/dev/null; then
        # Fast shutdown (by the data directory's postmaster.pid, whoever started it);
        # then make sure the process we started is gone.
        "${as_owner[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" stop -m fast -w -t 20 \
            >/dev/null 2>&1 || true
        kill -INT "$pg_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pg_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pg_pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

"${as_owner[@]}" "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
    --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }

# A free port on loopback, never 5432.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# Durability is not needed for a throwaway database; many apps connect at once.
"${as_owner[@]}" "$PG_BIN/postgres" -D "$dir/data" -h 127.0.0.1 -p "$port" -k "$dir" \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=1000 >"$dir/postgres.log" 2>&1 &
pg_pid=$!

for _ in $(seq 600); do
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
        break
    fi
    if ! kill -0 "$pg_pid" 2>/dev/null; then
        cat "$dir/postgres.log" >&2
        exit 1
    fi
    sleep 0.1
done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres || {
    echo "test-postgres: PostgreSQL did not start" >&2
    cat "$dir/postgres.log" >&2
    exit 1
}

echo "test-postgres: PostgreSQL on 127.0.0.1:$port"
ZEROSTATE_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres" \
    cargo test --locked --test api "$@"
