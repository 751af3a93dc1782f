#!/usr/bin/env bash
# The base images against a real engine, after deploy/engine.sh ensure (deploy/ci.sh runs it
# first): every name the Dockerfile and the compose file use is there; a second `standins` run
# builds nothing; Postgres honours POSTGRES_USER/PASSWORD/DB with its data in
# /var/lib/postgresql/data and answers pg_isready; Redis takes clients from other containers
# (protected mode off); `validate` runs `keyshard config check` in the image. Skipped without an
# engine. Run by deploy/ci.sh, or alone.
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKER=${DOCKER:-docker}
if [[ -n ${KEYSHARD_TEST_NO_ENGINE:-} ]] || ! "$DOCKER" info >/dev/null 2>&1; then
  echo "standins_test.sh: 0 passed, 0 failed (skipped: no Docker engine)"
  exit 0
fi

ENGINE=$ROOT/deploy/engine.sh
RUN=ks-standins-$$
NET=$RUN-net
# Containers and the network of this run go, whatever happens.
cleanup_engine() {
  "$DOCKER" rm -f -v "$RUN-pg" "$RUN-redis" >/dev/null 2>&1 || true
  "$DOCKER" network rm "$NET" >/dev/null 2>&1 || true
}
trap 'cleanup_engine; rm -rf "$TMP"' EXIT

images() { "$ENGINE" names | awk '{print $2}'; }
all_present() {
  local img missing=()
  for img in $(images); do
    "$DOCKER" image inspect "$img" >/dev/null 2>&1 || missing+=("$img")
  done
  ((${#missing[@]} == 0)) || { echo "missing: ${missing[*]}" && return 1; }
  echo "present: $(images | paste -sd' ')"
}
expect "every base image the Dockerfile and compose file name is here" 0 "present:" -- all_present

if "$ENGINE" registry >/dev/null 2>&1; then
  echo "(a registry answers: these are the real images, not stand-ins; the stand-in cases are skipped)"
  finish
  exit
fi

expect "a second standins run builds nothing" 0 "stand-ins: 0 built" "!pull" -- "$ENGINE" standins

# ── Postgres: the official image's contract for what compose uses
PG=$(images | grep -E '^([^/]*/)?postgres:' | head -n 1)
REDIS=$(images | grep -E '^([^/]*/)?redis:' | head -n 1)
"$DOCKER" network create "$NET" >/dev/null
"$DOCKER" run -d --name "$RUN-pg" --network "$NET" \
  -e POSTGRES_USER=ledger_user -e POSTGRES_PASSWORD=pw-1 -e POSTGRES_DB=ledger_db \
  --health-cmd 'pg_isready -h 127.0.0.1 -U ledger_user -d ledger_db' --health-interval 1s \
  --health-retries 60 "$PG" >/dev/null
# Polled: the engine reports health by status only. 60 s covers initdb on a loaded machine.
wait_healthy() {
  local deadline=$((SECONDS + 60)) status
  while ((SECONDS < deadline)); do
    status=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$1")
    [[ $status == healthy ]] && echo healthy && return 0
    sleep 1
  done
  echo "still $status after 60 s"
  "$DOCKER" logs "$1" 2>&1 | tail -n 20
  return 1
}
psql_as() {
  "$DOCKER" run --rm --network "$NET" -e PGPASSWORD="$1" --entrypoint psql "$PG" \
    -h "$RUN-pg" -U ledger_user -d ledger_db -Atc "$2"
}
expect "postgres: the pg_isready healthcheck turns healthy" 0 healthy -- wait_healthy "$RUN-pg"
expect "postgres: the user, database and password from the environment" 0 "ledger_user|ledger_db" \
  -- psql_as pw-1 'select current_user, current_database()'
expect "postgres: a wrong password is refused over the network" 2 "password authentication failed" \
  -- psql_as wrong 'select 1'
expect "postgres: data in /var/lib/postgresql/data" 0 "/var/lib/postgresql/data" \
  -- psql_as pw-1 'show data_directory'
expect "postgres: a volume on that path" 0 "/var/lib/postgresql/data" \
  -- "$DOCKER" inspect -f '{{range .Mounts}}{{.Destination}} {{end}}' "$RUN-pg"
expect "postgres: no password and no trust is refused, as the official image does" 1 "POSTGRES_PASSWORD is not set" \
  -- "$DOCKER" run --rm "$PG"
psql_as pw-1 'create table t (x int); insert into t values (42)' >/dev/null
after_restart() {
  "$DOCKER" restart -t 30 "$RUN-pg" >/dev/null
  wait_healthy "$RUN-pg" >/dev/null && psql_as pw-1 'select x from t'
  echo "initialised $("$DOCKER" logs "$RUN-pg" 2>&1 | grep -c 'initialized') time(s)"
}
expect "postgres: a restart keeps the data and does not initialise again" 0 "42" "initialised 1 time(s)" \
  -- after_restart

# ── Redis: clients from another container (Debian's default protected mode would refuse them)
"$DOCKER" run -d --name "$RUN-redis" --network "$NET" "$REDIS" \
  redis-server --appendonly yes --maxmemory-policy noeviction >/dev/null
redis_ping() {
  local deadline=$((SECONDS + 30))
  until "$DOCKER" run --rm --network "$NET" --entrypoint redis-cli "$REDIS" -h "$RUN-redis" ping 2>&1 | grep -q PONG; do
    ((SECONDS < deadline)) || { echo "no PONG from $RUN-redis" && return 1; }
    sleep 1
  done
  echo PONG
}
expect "redis: answers another container" 0 PONG -- redis_ping
expect "redis: compose's flags reach the server" 0 noeviction \
  -- "$DOCKER" exec "$RUN-redis" redis-cli config get maxmemory-policy

# ── validate with the image, when there is no local binary
IMAGE=${KEYSHARD_IMAGE:-keyshard:local}
if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  expect "validate in the image: the example's 13 problems, named" 1 "13 problem(s)" \
    "DISCORD_TOKEN is still a placeholder" "$ROOT/.env.multi.example" \
    -- env KEYSHARD_BIN=/bin/false "$SCRIPT" validate "$ROOT/.env.multi.example"
  sed -e 's/^DISCORD_TOKEN=.*/DISCORD_TOKEN=MTAx.fake.token/' \
    -e 's/^\(OPENAI\|MINIMAX\|STABILITY\)_API_KEY_\([0-9]\)=.*/\1_API_KEY_\2=sk-test-\1-\2/' \
    "$ROOT/.env.multi.example" >"$TMP/good.env"
  chmod 600 "$TMP/good.env"
  expect "validate in the image reads a mode-600 file as its owner" 0 "is ok" "!sk-test" \
    -- env KEYSHARD_BIN=/bin/false "$SCRIPT" validate "$TMP/good.env"
fi

finish
