#!/usr/bin/env bash
# Every variable the keyshard binary reads (crates/keyshard-bot/src/config.rs) is documented in
# .env.multi.example, known to `deploy-multi.sh validate`, and passed to the instances by
# docker-compose.multi.yml. When config.rs gains a variable, this names the files to update.
# Run by `deploy-multi.sh test`, or alone.
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG=$ROOT/crates/keyshard-bot/src/config.rs

# The names a config source reads: env.get("X"), env.parse("X", …), env.secret("X"), …, and for
# each env.provider("P", …) every format!("{prefix}_SUFFIX"). Test code is left out, and the
# code is joined into one line first, since rustfmt breaks long call chains across lines.
config_vars() {
  local code prefixes suffixes
  code=$(sed '/^#\[cfg(test)\]/,$d' "$1" | tr -s '\n\t ' ' ' | sed -E 's/\( /(/g; s/ \./\./g')
  grep -oE '\.(get|parse|parse_with|optional_parse(::<[^>]*>)?|secret|id_list)\("[A-Z][A-Z0-9_]*"' <<<"$code" |
    sed -E 's/.*\("([A-Z0-9_]+)"/\1/'
  prefixes=$(grep -oE '\.provider\("[A-Z]+"' <<<"$code" | sed -E 's/.*\("([A-Z]+)"/\1/' | sort -u)
  suffixes=$(grep -oE '\{prefix\}_[A-Z][A-Z0-9_]*' <<<"$code" | sed 's/{prefix}_//' | sort -u)
  local p s
  for p in $prefixes; do
    for s in $suffixes; do
      echo "${p}_$s"
    done
  done
}

# One line per variable missing from one of the three files; nothing when all agree.
check_contract() {
  local config=$1 vars var known
  vars=$(config_vars "$config" | sort -u)
  if (($(wc -l <<<"$vars") < 20)); then
    echo "read only $(wc -l <<<"$vars") variable names from $config: has its shape changed? (update config_vars)"
    return
  fi
  known=$(sed -n '/^KNOWN_VARS=(/,/^)/p' "$SCRIPT")
  for var in $vars; do
    grep -qE "^${var}(_1)?=" "$ROOT/.env.multi.example" ||
      echo "$var: read by the bot, not documented in .env.multi.example"
    grep -qw -- "$var" <<<"$known" ||
      echo "$var: read by the bot, unknown to deploy-multi.sh validate (KNOWN_VARS)"
    grep -qE "^ +${var}:" "$ROOT/docker-compose.multi.yml" ||
      echo "$var: read by the bot, not passed to the instances by docker-compose.multi.yml"
  done
}

expect "config.rs, .env.multi.example, validate and compose agree" 0 "!read by the bot" "!read only" \
  -- check_contract "$CONFIG"
sed 's/env.parse("HEARTBEAT_MS"/env.parse("HEARTBEAT_PERIOD_MS"/' "$CONFIG" >"$TMP/config.rs"
expect "a new variable in config.rs is caught in all three places" 0 \
  "HEARTBEAT_PERIOD_MS: read by the bot, not documented" "HEARTBEAT_PERIOD_MS: read by the bot, unknown" \
  "HEARTBEAT_PERIOD_MS: read by the bot, not passed" -- check_contract "$TMP/config.rs"
expect "a config.rs of another shape is noticed" 0 "has its shape changed" -- check_contract /dev/null

finish
