#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (single node on SQLite and on
# PostgreSQL, and clusters of several nodes on PostgreSQL and Redis), the browser tests in real Chromium,
# the Python SDK's tests and schemathesis against the served OpenAPI document, all
# against the real server binary. Installs what a fresh Debian machine lacks (Chromium,
# Node.js, Python's venv, PostgreSQL, Redis, nginx, the npm packages of package.json, the PyPI packages of the SDK
# and of schemathesis) first; installing system packages needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium fonts-liberation)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The store and cluster tests start their own PostgreSQL, Redis and nginx on loopback.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

echo "== npm packages for the browser tests"
npm ci --no-audit --no-fund --loglevel=error

echo "== cargo test (unit and integration tests)"
cargo test --all-targets --locked

echo "== the API suite again on PostgreSQL (a throwaway server, a fresh database per app)"
./scripts/test-postgres.sh

echo "== browser tests (Chromium)"
ZEROSTATE_BIN="$PWD/target/debug/zerostate" CHROMIUM_PATH="$(command -v chromium)" npm run --silent test:e2e

echo "== browser tests against a two-node cluster behind nginx (PostgreSQL, Redis)"
ZEROSTATE_BIN="$PWD/target/debug/zerostate" CHROMIUM_PATH="$(command -v chromium)" ./scripts/test-e2e-cluster.sh

echo "== Python SDK tests (pytest)"
ZEROSTATE_BIN="$PWD/target/debug/zerostate" ./scripts/test-python.sh

echo "== schemathesis against the served OpenAPI document"
ZEROSTATE_BIN="$PWD/target/debug/zerostate" ./scripts/test-schemathesis.sh
