#!/usr/bin/env bash
# Runs the Python SDK's tests (sdk/python/tests) against the real server binary:
# creates a virtual environment, installs the SDK with its test extras into it, and runs
# pytest. The binary is $ZEROSTATE_BIN (default: target/debug/zerostate, built if
# missing). Exits non-zero when a test fails or when no test ran at all.
#
#   scripts/test-python.sh                 # everything
#   scripts/test-python.sh -k cancel       # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${ZEROSTATE_BIN:-}" ]; then
  ZEROSTATE_BIN="$PWD/target/debug/zerostate"
  [ -x "$ZEROSTATE_BIN" ] || cargo build --locked --bin zerostate
fi
if [ ! -x "$ZEROSTATE_BIN" ]; then
  echo "no server binary at $ZEROSTATE_BIN" >&2
  exit 1
fi
export ZEROSTATE_BIN

venv="${ZEROSTATE_PYTHON_VENV:-$PWD/target/python-venv}"
echo "== python venv in $venv"
python3 -m venv "$venv"
echo "== pip install ./sdk/python[test]"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "./sdk/python[test]"

echo "== pytest sdk/python/tests (server: $ZEROSTATE_BIN)"
set +e
"$venv/bin/python" -m pytest sdk/python/tests -p no:cacheprovider -v -rs "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: counted as a failure" >&2
  exit 1
fi
exit "$status"
