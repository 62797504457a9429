#!/usr/bin/env bash
# schemathesis against the OpenAPI document the server serves, with every check (set in
# scripts/schemathesis.toml; a `--checks` flag would override its per-operation part): no 500,
# no status, content type, header or body outside the document, invalid input refused,
# valid input accepted, authentication not ignored.
#
# Starts the built binary ($ZEROSTATE_BIN, default target/debug/zerostate) on
# 127.0.0.1 port 0 in a temporary data directory, registers the first account (an admin,
# so the admin routes are exercised too) and an agent, and runs schemathesis with the
# admin's session token (the agent's token for the agent runtime).
# Exits non-zero when schemathesis finds a failure.
#
# Settings (environment):
#   ZEROSTATE_BIN              binary under test (build it first: cargo build)
#   SCHEMATHESIS_VENV          virtualenv to use or create (default target/schemathesis-venv)
#   SCHEMATHESIS_MAX_EXAMPLES  cases per operation and phase (default 20)
#   SCHEMATHESIS_SEED          random seed (default 1; set another to explore)
#   SCHEMATHESIS_TIMEOUT_S     hard bound on the whole run (default 420)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BIN="$(realpath -m "${ZEROSTATE_BIN:-target/debug/zerostate}")"
VENV="$(realpath -m "${SCHEMATHESIS_VENV:-target/schemathesis-venv}")"
VERSION="4.32.5"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-20}"
SEED="${SCHEMATHESIS_SEED:-1}"
TIMEOUT_S="${SCHEMATHESIS_TIMEOUT_S:-420}"

if [ ! -x "$BIN" ]; then
    echo "test-schemathesis: $BIN not found; run cargo build first" >&2
    exit 2
fi

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "test-schemathesis: installing schemathesis $VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# No per-address limits: every request of the run comes from 127.0.0.1.
ZEROSTATE_REGISTRATION_LIMIT=0 ZEROSTATE_MAX_CONNECTIONS_PER_ADDRESS=0 RUST_LOG=warn \
    "$BIN" serve --addr 127.0.0.1:0 --data-dir "$WORK/data" --no-builtin-agent \
    >"$WORK/stdout" 2>"$WORK/server.log" &
SERVER_PID=$!

BASE=""
for _ in $(seq 1 300); do
    BASE="$(sed -n 's/^zerostate listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$WORK/stdout" | head -n 1)"
    [ -n "$BASE" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "test-schemathesis: the server exited at start-up:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$BASE" ]; then
    echo "test-schemathesis: the server did not start within 30 s" >&2
    exit 1
fi
echo "test-schemathesis: server at $BASE"

json_field() {
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
# Credentials for the run, read by scripts/schemathesis.toml: the admin's session token
# for the API, an agent token for the agent runtime.
ZS_USER_TOKEN="$(
    curl -sS --max-time 30 -X POST "$BASE/api/v1/users/register" \
        -H 'Content-Type: application/json' \
        -d '{"email":"schemathesis@example.com","password":"a long passphrase for fuzzing","full_name":"Schemathesis"}' |
        json_field token
)"
# The agent belongs to another user, so the admin's fuzzed calls are less likely to
# delete it or rotate its token half-way through the run.
OWNER_TOKEN="$(
    curl -sS --max-time 30 -X POST "$BASE/api/v1/users/register" \
        -H 'Content-Type: application/json' \
        -d '{"email":"agent-owner@example.com","password":"another long passphrase","full_name":"Owner"}' |
        json_field token
)"
ZS_AGENT_TOKEN="$(
    curl -sS --max-time 30 -X POST "$BASE/api/v1/agents/register" \
        -H 'Content-Type: application/json' -H "Authorization: Bearer $OWNER_TOKEN" \
        -d '{"name":"schemathesis agent","capabilities":["general"]}' |
        json_field agent_token
)"
export ZS_USER_TOKEN ZS_AGENT_TOKEN
# Queued work for the agent, so a claim answers at once instead of long-polling for up
# to `wait_s` seconds (the built-in agent is off, so the tasks stay queued).
for i in $(seq 1 300); do
    curl -sS --max-time 30 -o /dev/null -X POST "$BASE/api/v1/tasks/submit" \
        -H 'Content-Type: application/json' -H "Authorization: Bearer $OWNER_TOKEN" \
        -d "{\"query\":\"queued for the fuzzed agent $i\"}"
done

status=0
# One worker: with several, Python 3.11's `ast` can fail when hypothesis describes its
# strategies from two threads at once ("AST constructor recursion depth mismatch").
# Excluded: the SSE stream never ends by design (it is covered by tests/api/sse.rs), and
# logout would revoke the token the rest of the run uses (covered by tests/api/users.rs
# and the authorization matrix).
# Run from the temporary directory: schemathesis keeps a cache in `.schemathesis/` of
# its working directory.
cd "$WORK"
timeout --signal=INT --kill-after=30 "$TIMEOUT_S" \
    "$VENV/bin/schemathesis" --config-file "$ROOT/scripts/schemathesis.toml" \
    run "$BASE/api/v1/openapi.json" \
    ${SCHEMATHESIS_EXTRA_ARGS:-} \
    --exclude-path /api/v1/events \
    --exclude-path /api/v1/users/logout \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 40 \
    --max-failures 50 \
    --no-color \
    --report junit --report-dir "$WORK/report" || status=$?

if grep -q "panicked" "$WORK/server.log"; then
    echo "test-schemathesis: the server panicked:" >&2
    grep -A3 "panicked" "$WORK/server.log" >&2
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "test-schemathesis: FAILED (exit $status)" >&2
    if [ -n "${SCHEMATHESIS_KEEP_REPORT:-}" ]; then
        cp -r "$WORK/report" "$SCHEMATHESIS_KEEP_REPORT" || true
    fi
    exit "$status"
fi
echo "test-schemathesis: passed"
