#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, then the browser tests in real
# Chromium. Installs what a fresh Debian machine lacks (Chromium, Node.js, the npm
# packages of package.json) first; installing system packages needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium fonts-liberation)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
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

echo "== browser tests (Chromium)"
ZEROSTATE_BIN="$PWD/target/debug/zerostate" CHROMIUM_PATH="$(command -v chromium)" npm run --silent test:e2e
