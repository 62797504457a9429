#!/usr/bin/env bash
# Runs the cluster tests (issue 9): the Rust cluster suite (tests/cluster: each test
# starts its own PostgreSQL, Redis, nodes and nginx on 127.0.0.1), then the browser suite
# against a two-node cluster behind nginx. Installs nothing: it needs PostgreSQL
# (initdb/postgres under /usr/lib/postgresql/<v>/bin, or ZEROSTATE_PG_BIN), redis-server
# and nginx (Debian: postgresql redis-server nginx-light), plus what the browser suite
# needs (npm ci done, Chromium). As root, PostgreSQL runs as the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -n "${ZEROSTATE_PG_BIN:-}" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-cluster.sh: missing ${missing[*]} (apt-get install ${missing[*]})" >&2
  exit 1
fi

echo "== cargo test --test cluster (nodes sharing PostgreSQL and Redis)"
cargo test --locked --test cluster

echo "== browser tests against two nodes behind nginx"
./scripts/test-e2e-cluster.sh
