#!/usr/bin/env bash
# Shared helpers of the deploy shell tests: run deploy-multi.sh, assert on exit code and output.
# Each test file sources it, runs its cases with `expect`, and ends with `finish`, whose last line
# ("<file>: N passed, M failed") deploy-multi.sh test adds to its totals.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the files that source this one
SCRIPT=$ROOT/deploy-multi.sh
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The keyshard binary whose `config check` deploy-multi.sh validate runs: deploy/ci.sh passes the
# one it just built; a test run alone builds it (quietly, once, in the usual target directory).
keyshard_bin() {
  if [[ -z ${KEYSHARD_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --locked -q -p keyshard-bot --bin keyshard) >&2 ||
      { echo "cannot build the keyshard binary the deploy tests need" >&2 && exit 1; }
    KEYSHARD_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/keyshard
  fi
  export KEYSHARD_BIN
}
PASSED=0
FAILED=0

# expect NAME WANT_RC NEEDLE... -- COMMAND...
# Runs COMMAND, then checks its exit code and that the output (stdout + stderr) contains every
# NEEDLE; a NEEDLE starting with ! must be absent.
expect() {
  local name=$1 want=$2 needles=() out rc=0 why=() needle
  shift 2
  while (($#)) && [[ $1 != -- ]]; do
    needles+=("$1")
    shift
  done
  shift
  out=$("$@" 2>&1) || rc=$?
  [[ $rc == "$want" ]] || why+=("exit code $rc, expected $want")
  for needle in "${needles[@]}"; do
    if [[ $needle == '!'* ]]; then
      ! grep -qF -- "${needle#!}" <<<"$out" || why+=("output has '${needle#!}'")
    else
      grep -qF -- "$needle" <<<"$out" || why+=("output lacks '$needle'")
    fi
  done
  if ((${#why[@]} == 0)); then
    PASSED=$((PASSED + 1))
    printf 'ok    %s\n' "$name"
  else
    FAILED=$((FAILED + 1))
    printf 'FAIL  %s: %s\n' "$name" "$(IFS=';'; echo "${why[*]}")"
    printf '%s\n' "$out" | sed 's/^/      | /'
  fi
}

finish() {
  printf '%s: %d passed, %d failed\n' "$(basename "$0")" "$PASSED" "$FAILED"
  ((FAILED == 0))
}
