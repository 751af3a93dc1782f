#!/usr/bin/env bash
# `deploy-multi.sh validate` (which runs `keyshard config check`) on good and bad env files: each
# case checks the exit code and that the message names the offending variable. The verdicts are
# those of the bash validator this replaced. Run by deploy/ci.sh, or alone.
# sed scripts below use $ for "last line", not for expansion.
# shellcheck disable=SC2016
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

keyshard_bin
EXAMPLE=$ROOT/.env.multi.example

# A file that passes: the example with a fake token and a distinct fake key per instance.
# The keys all start with sk-test-, which no output may ever contain (secrets stay secret).
good() {
  local f=$TMP/$1.env
  sed -e 's/^DISCORD_TOKEN=.*/DISCORD_TOKEN=MTAxNjc4.fake.tokenvalue/' \
    -e 's/^\(OPENAI\|MINIMAX\|STABILITY\)_API_KEY_\([0-9]\)=.*/\1_API_KEY_\2=sk-test-\1-\2-5f3a9c/' \
    "$EXAMPLE" >"$f"
  chmod 600 "$f"
  printf '%s' "$f"
}

# A good file changed by a sed script.
variant() {
  local f
  f=$(good "$1")
  sed -i -e "$2" "$f"
  printf '%s' "$f"
}

validate() { "$SCRIPT" validate "$@"; }
NO_LEAK='!sk-test-'

# ── The example and a good file
expect "example: every placeholder named, exit 1" 1 \
  "DISCORD_TOKEN is still a placeholder" \
  "OPENAI_API_KEY_1 is still a placeholder" "OPENAI_API_KEY_2 is still a placeholder" \
  "OPENAI_API_KEY_3 is still a placeholder" "OPENAI_API_KEY_4 is still a placeholder" \
  "MINIMAX_API_KEY_1 is still a placeholder" "MINIMAX_API_KEY_2 is still a placeholder" \
  "MINIMAX_API_KEY_3 is still a placeholder" "MINIMAX_API_KEY_4 is still a placeholder" \
  "STABILITY_API_KEY_1 is still a placeholder" "STABILITY_API_KEY_2 is still a placeholder" \
  "STABILITY_API_KEY_3 is still a placeholder" "STABILITY_API_KEY_4 is still a placeholder" \
  "13 problem(s)" -- validate "$EXAMPLE"

expect "good file passes" 0 "is ok" "!problem:" "!warning:" "$NO_LEAK" -- validate "$(good good)"

expect "missing file" 1 "nowhere.env not found" "cp .env.multi.example" -- validate "$TMP/nowhere.env"

# ── Discord token
expect "token line missing" 1 "DISCORD_TOKEN is missing" "$NO_LEAK" \
  -- validate "$(variant no-token '/^DISCORD_TOKEN=/d')"
expect "token empty" 1 "DISCORD_TOKEN is missing" \
  -- validate "$(variant empty-token 's/^DISCORD_TOKEN=.*/DISCORD_TOKEN=/')"
expect "token CHANGE_ME" 1 "DISCORD_TOKEN is still a placeholder" \
  -- validate "$(variant token-change-me 's/^DISCORD_TOKEN=.*/DISCORD_TOKEN=CHANGE_ME/')"
expect "different tokens per instance" 1 "different DISCORD_TOKEN" "!MTAxNjc4" \
  -- validate "$(variant two-bots '$a DISCORD_TOKEN_2=MTk5OTk5.other.bot')"

# ── Keys: placeholders of each kind, each named, the real ones not
expect "placeholder styles: CHANGE_ME, <...>, your-" 1 \
  "OPENAI_API_KEY_2 is still a placeholder" "MINIMAX_API_KEY_3 is still a placeholder" \
  "STABILITY_API_KEY_4 is still a placeholder" "!OPENAI_API_KEY_1 " "3 problem(s)" "$NO_LEAK" \
  -- validate "$(variant styles 's/^OPENAI_API_KEY_2=.*/OPENAI_API_KEY_2=CHANGE_ME/; s/^MINIMAX_API_KEY_3=.*/MINIMAX_API_KEY_3=<minimax key>/; s/^STABILITY_API_KEY_4=.*/STABILITY_API_KEY_4=your-key/')"
expect "a per-instance key missing" 1 "MINIMAX_API_KEY_2 is missing" "1 problem(s)" \
  -- validate "$(variant one-missing '/^MINIMAX_API_KEY_2=/d')"
expect "a per-instance key empty" 1 "OPENAI_API_KEY_4 is missing" \
  -- validate "$(variant one-empty 's/^OPENAI_API_KEY_4=.*/OPENAI_API_KEY_4=/')"
expect "provider without keys is disabled, not an error" 0 "Stability is disabled" "is ok" \
  -- validate "$(variant no-stability '/^STABILITY_API_KEY_/d')"
expect "no provider at all" 1 "no provider has keys" \
  -- validate "$(variant no-keys '/^[A-Z]*_API_KEY_/d')"

# ── Keys shared between instances
expect "same key on two instances" 1 "OPENAI_API_KEY_1 and OPENAI_API_KEY_3 hold the same key" "$NO_LEAK" \
  -- validate "$(variant dup 's/^OPENAI_API_KEY_3=.*/OPENAI_API_KEY_3=sk-test-OPENAI-1-5f3a9c/')"
expect "one shared key for every instance" 1 "OPENAI_API_KEY is shared by 4 instances" "$NO_LEAK" \
  -- validate "$(variant shared '/^OPENAI_API_KEY_/d; $a OPENAI_API_KEY=sk-test-shared')"

# ── INSTANCE_COUNT against the compose services
expect "INSTANCE_COUNT below the services" 1 "INSTANCE_COUNT=3" "keyshard-{1,2,3,4}" \
  -- validate "$(variant count3 's/^INSTANCE_COUNT=.*/INSTANCE_COUNT=3/')"
expect "INSTANCE_COUNT not a number" 1 'INSTANCE_COUNT="four" is not a valid number' \
  -- validate "$(variant count-word 's/^INSTANCE_COUNT=.*/INSTANCE_COUNT=four/')"
sed '/^  keyshard-4:/,/^$/d' "$ROOT/docker-compose.multi.yml" >"$TMP/three.yml"
expect "a compose file with 3 instance services" 1 "INSTANCE_COUNT=4" "keyshard-{1,2,3}" \
  -- env KEYSHARD_COMPOSE_FILE="$TMP/three.yml" "$SCRIPT" validate "$(good three)"
expect "INSTANCE_ID in the shared file is a warning" 0 "warning: INSTANCE_ID is set" \
  -- validate "$(variant with-id '$a INSTANCE_ID=2')"

# ── Numbers and formats
expect "non-numeric limits, each named" 1 \
  'OPENAI_RPM="fast" is not a valid number' "MINIMAX_CONCURRENCY=0 must be at least 1" \
  'STABILITY_TIMEOUT_SECS="-5" is not a valid number' 'OPENAI_TPM_2="lots" is not a valid number' \
  -- validate "$(variant numbers 's/^OPENAI_RPM=.*/OPENAI_RPM=fast/; s/^MINIMAX_CONCURRENCY=.*/MINIMAX_CONCURRENCY=0/; s/^STABILITY_TIMEOUT_SECS=.*/STABILITY_TIMEOUT_SECS=-5/; $a OPENAI_TPM_2=lots')"
expect "a daily limit may be empty, but not a word" 1 'MINIMAX_RPD="unlimited"' \
  -- validate "$(variant rpd 's/^MINIMAX_RPD=.*/MINIMAX_RPD=unlimited/')"
expect "TAKEOVER is on or off" 1 'TAKEOVER="sometimes" must be on or off' \
  -- validate "$(variant takeover 's/^TAKEOVER=.*/TAKEOVER=sometimes/')"
expect "dead-after not above the heartbeat" 1 "DEAD_AFTER_MS (1000) must be longer than HEARTBEAT_MS (1000)" \
  -- validate "$(variant dead 's/^DEAD_AFTER_MS=.*/DEAD_AFTER_MS=1000/')"
expect "admin ids" 1 'ADMIN_USER_IDS has "bob", which is not a user id' \
  -- validate "$(variant admins 's/^ADMIN_USER_IDS=.*/ADMIN_USER_IDS=123,bob/')"
expect "bad Redis URL named, its password not printed" 1 "REDIS_URL is not a valid Redis URL" "!hunter2" \
  -- validate "$(variant redis 's|^REDIS_URL=.*|REDIS_URL=http://:hunter2@db:6379|')"
expect "base URL without scheme" 1 'OPENAI_BASE_URL="api.openai.com/v1" must start with http' \
  -- validate "$(variant base 's|^OPENAI_BASE_URL=.*|OPENAI_BASE_URL=api.openai.com/v1|')"
expect "HTTP_BIND without a port" 1 'HTTP_BIND="0.0.0.0" is not valid (expected host:port)' \
  -- validate "$(variant bind 's/^HTTP_BIND=.*/HTTP_BIND=0.0.0.0/')"

# ── File syntax
expect "a variable set twice" 1 "OPENAI_RPM is set twice" \
  -- validate "$(variant twice '$a OPENAI_RPM=100')"
expect "a line that is not KEY=VALUE" 1 "is not KEY=VALUE" \
  -- validate "$(variant garbage '$a this is not an assignment')"
expect "a misspelt variable is a warning" 0 "OPENAI_APIKEY_1 is not a keyshard variable" \
  -- validate "$(variant typo '$a OPENAI_APIKEY_1=whatever')"
expect "export, quotes, inline comments and CRLF are read" 0 "is ok" "$NO_LEAK" \
  -- validate "$(variant dialects 's/^\(OPENAI_API_KEY_[0-9]\)=\(.*\)/export \1="\2"/; s/^\(MINIMAX_API_KEY_[0-9]\)=\(.*\)/\1='\''\2'\'' # key/; s/$/\r/')"
# ── What the bash validator did not know: Config's own rules, the compose file's variables
expect "a per-instance value is named as written" 1 "HEARTBEAT_MS_3=0 must be at least 1" "!HEARTBEAT_MS=" \
  -- validate "$(variant hb3 '$a HEARTBEAT_MS_3=0')"
expect "OVERLOAD_WAIT_SECS=inf is refused, not a crash at start" 1 "OVERLOAD_WAIT_SECS=inf must be a number of seconds" \
  -- validate "$(variant inf 's/^OVERLOAD_WAIT_SECS=.*/OVERLOAD_WAIT_SECS=inf/')"
# Every ${VAR} the compose file interpolates may be set in the env file without a warning.
compose_vars=$(grep -oE '\$\{[A-Z][A-Z0-9_]*' "$ROOT/docker-compose.multi.yml" | sed 's/^\${//' | sort -u)
with_compose_vars() {
  local f v
  f=$(good compose-vars)
  for v in $compose_vars; do
    case $v in
      *_API_KEY_[0-9]*) ;; # set by good already
      POSTGRES_PASSWORD) sed -i "s/^$v=.*/$v=pg-pass-1/" "$f" ;;
      *) sed -i "/^$v=/d" "$f" && echo "$v=example:1" >>"$f" ;;
    esac
  done
  printf '%s' "$f"
}
expect "the compose file's variables are known" 0 "is ok" "!warning:" -- validate "$(with_compose_vars)"
expect "a Postgres password that would break DATABASE_URL" 1 "POSTGRES_PASSWORD has characters a URL must escape" "!p@ss" \
  -- validate "$(variant pg 's|^POSTGRES_PASSWORD=.*|POSTGRES_PASSWORD=p@ss/w0rd|')"
expect "a stale binary without config check is passed over" 1 "neither is here" \
  -- env KEYSHARD_BIN=/bin/false DOCKER=/bin/false "$SCRIPT" validate "$(good stale)"

world=$(good world)
chmod 644 "$world"
expect "a world-readable env file is a warning" 0 "chmod 600" -- validate "$world"

finish
