#!/usr/bin/env bash
# Runs the browser suite (tests/e2e) against a two-node cluster behind nginx instead of
# one server: with ZEROSTATE_E2E_CLUSTER=1, tests/e2e/helpers.mjs starts each test
# file's "server" with scripts/cluster.sh (PostgreSQL, Redis, two nodes, nginx; a fresh
# database) and points the pages and API calls at nginx, so every connection lands on
# either node. Installs nothing: needs `npm ci` done, Chromium, PostgreSQL, redis-server
# and nginx. Builds the debug binary unless ZEROSTATE_BIN names one.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d node_modules/playwright-core ] || { echo "test-e2e-cluster.sh: run npm ci first" >&2; exit 1; }
if [ -z "${ZEROSTATE_BIN:-}" ]; then
  cargo build --locked --bin zerostate
  ZEROSTATE_BIN="$PWD/target/debug/zerostate"
fi
CHROMIUM_PATH="${CHROMIUM_PATH:-$(command -v chromium || true)}"
[ -n "$CHROMIUM_PATH" ] || { echo "test-e2e-cluster.sh: Chromium is not installed" >&2; exit 1; }

ZEROSTATE_E2E_CLUSTER=1 ZEROSTATE_BIN="$ZEROSTATE_BIN" CHROMIUM_PATH="$CHROMIUM_PATH" \
  npm run --silent test:e2e
