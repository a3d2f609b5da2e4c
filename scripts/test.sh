#!/usr/bin/env bash
# Set everything up, then run every check: ruff, mypy, import-linter, the whole pytest suite.
# Runs all checks even when one fails, then exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

BIN=.venv/bin
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# The whole run is CI's run: a test whose machine requirement is missing (root,
# user xattrs, atime updates) fails instead of skipping (resurgo.testing.environment).
export CI="${CI:-true}"
failed=()

step() {
  local name=$1
  shift
  printf '\n=== %s\n' "$name"
  if "$@"; then
    printf -- '--- %s: ok\n' "$name"
  else
    printf -- '--- %s: FAILED\n' "$name"
    failed+=("$name")
  fi
}

step ruff "$BIN/ruff" check .
step mypy "$BIN/mypy"
step import-linter "$BIN/lint-imports"

printf '\n=== pytest\n'
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
"$BIN/pytest" -n 2 --timeout=600 -q 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
summary=$(grep -v '^\s*$' "$log" | tail -n 1)
if [ "$rc" -eq 5 ]; then
  printf -- '--- pytest: FAILED (no tests were collected)\n'
  failed+=(pytest)
elif [ "$rc" -ne 0 ]; then
  printf -- '--- pytest: FAILED (exit %s)\n' "$rc"
  failed+=(pytest)
fi

if [ "${#failed[@]}" -gt 0 ]; then
  printf '\nFAILED: %s\n' "${failed[*]}"
fi
# pytest's own summary line closes the output.
printf '\n%s\n' "$summary"
[ "${#failed[@]}" -eq 0 ]
