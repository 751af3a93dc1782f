#!/usr/bin/env bash
# The docker verbs of deploy-multi.sh against a fake docker CLI (no engine needed): the clear
# failures (no env file, no docker, no engine), the compose calls each verb makes, and the order
# of rolling-restart — drain one, wait for its /readyz, then the next; stop at one that never
# gets ready. Run by `deploy-multi.sh test`, or alone.
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
keyshard_bin

# ── The fake docker: logs every call to $FAKE_LOG, answers like an engine with compose v2.
# An instance started by `up` answers its first readiness probe "not yet", then "ready"; with
# $FAKE_STATE/never-N it never gets ready after `up`; $FAKE_STATE/down-N makes it not ready at all.
mkdir -p "$TMP/bin" "$TMP/state"
cat >"$TMP/bin/docker" <<'FAKE'
#!/usr/bin/env bash
set -u
echo "docker $*" >>"$FAKE_LOG"
case $1 in
  info) exit "${FAKE_INFO_RC:-0}" ;;
  inspect)
    [[ $3 == *State.Running* ]] && echo true || echo "/fake state=running"
    exit 0
    ;;
  compose) shift ;;
  *) exit 0 ;;
esac
[[ $1 == version ]] && exit 0
while [[ $1 == --* ]]; do shift 2; done # --project-name, --file, --env-file, --profile
cmd=$1
shift
svc=${!#}
case $cmd in
  up)
    echo "up $svc" >>"$FAKE_EVENTS"
    echo starting >"$FAKE_STATE/$svc"
    ;;
  exec)
    svc=$2
    if [[ $3 == keyshard-readyz ]]; then
      n=${svc#keyshard-}
      if [[ -e $FAKE_STATE/down-$n ]] || [[ -e $FAKE_STATE/never-$n && -e $FAKE_STATE/$svc ]]; then
        echo "readyz $svc no" >>"$FAKE_EVENTS"
        exit 1
      fi
      if [[ $(cat "$FAKE_STATE/$svc" 2>/dev/null) == starting ]]; then
        echo ready >"$FAKE_STATE/$svc"
        echo "readyz $svc no" >>"$FAKE_EVENTS"
        exit 1
      fi
      echo "readyz $svc yes" >>"$FAKE_EVENTS"
    fi
    ;;
  ps) [[ ${1:-} == -q ]] && echo "cid-$svc" ;;
esac
exit 0
FAKE
chmod +x "$TMP/bin/docker"

export FAKE_LOG=$TMP/calls.log FAKE_EVENTS=$TMP/events.log FAKE_STATE=$TMP/state
export DOCKER=$TMP/bin/docker READY_TIMEOUT_SECS=1 READY_POLL_SECS=0.1 SETTLE_SECS=0 START_STAGGER_SECS=0
reset_fake() {
  rm -f "$FAKE_LOG" "$FAKE_EVENTS" "$FAKE_STATE"/*
  : >"$FAKE_LOG"
  : >"$FAKE_EVENTS"
}
events() { paste -sd'|' "$FAKE_EVENTS"; }
# Runs a verb, then prints the docker calls it made.
run_then_log() { "$SCRIPT" "$@" && cat "$FAKE_LOG"; }

GOOD=$TMP/good.env
sed -e 's/^DISCORD_TOKEN=.*/DISCORD_TOKEN=MTAx.fake.token/' \
  -e 's/^\(OPENAI\|MINIMAX\|STABILITY\)_API_KEY_\([0-9]\)=.*/\1_API_KEY_\2=sk-test-\1-\2/' \
  "$ROOT/.env.multi.example" >"$GOOD"
chmod 600 "$GOOD"
export KEYSHARD_ENV_FILE=$GOOD

# ── Usage
expect "help lists every verb" 0 start stop "restart [N]" rolling-restart "status" "logs [N]" \
  "validate [FILE]" demo test -- "$SCRIPT" help
expect "no verb: usage, exit 2" 2 "Usage:" -- "$SCRIPT"
expect "unknown verb: exit 2" 2 "unknown verb 'launch'" -- "$SCRIPT" launch

# ── Clear failures before any docker call
reset_fake
expect "start without the env file" 1 "missing.env not found" "cp .env.multi.example" \
  -- env KEYSHARD_ENV_FILE="$TMP/missing.env" "$SCRIPT" start
expect "stop without the env file" 1 "missing.env not found" \
  -- env KEYSHARD_ENV_FILE="$TMP/missing.env" "$SCRIPT" stop
expect "start refuses placeholders, before docker" 1 "DISCORD_TOKEN is still a placeholder" "not starting" \
  -- env KEYSHARD_ENV_FILE="$ROOT/.env.multi.example" "$SCRIPT" start
expect "  ... and made no docker call" 0 -- test ! -s "$FAKE_LOG"
expect "no docker installed" 1 "docker is not installed" \
  -- env DOCKER="$TMP/bin/no-such-docker" "$SCRIPT" stop
expect "no docker engine" 1 "cannot reach the Docker engine" -- env FAKE_INFO_RC=1 "$SCRIPT" stop

# ── validate without a local keyshard binary: `config check` in the image, offline, as the
# caller, with the files mounted where they are
validate_then_log() { KEYSHARD_BIN=/bin/false "$SCRIPT" validate "$1" && cat "$FAKE_LOG"; }
# The first build and the first run of a start, in the order they came.
start_then_order() {
  KEYSHARD_BIN=/bin/false "$SCRIPT" start >/dev/null &&
    grep -oE "build keyshard-1|run --rm" "$FAKE_LOG" | head -n 2 | paste -sd'|'
}
reset_fake
expect "validate in the image when there is no local binary" 0 \
  "run --rm --network none --read-only --user $(id -u):$(id -g) -v $GOOD:$GOOD:ro" \
  "--entrypoint keyshard keyshard:local config check --env-file $GOOD --compose docker-compose.multi.yml" \
  -- validate_then_log "$GOOD"
reset_fake
expect "start without a local binary builds the image, then validates with it" 0 \
  "build keyshard-1|run --rm" -- start_then_order

# ── The compose calls of each verb
reset_fake
expect "start: build, redis and postgres, then the instances in order" 0 "started" -- "$SCRIPT" start
expect "  ... in that order" 0 "up postgres|up keyshard-1|up keyshard-2|up keyshard-3|up keyshard-4" -- events
expect "  ... the image built once" 0 "compose --project-name keyshard --file docker-compose.multi.yml --env-file $GOOD build keyshard-1" -- cat "$FAKE_LOG"
reset_fake
expect "stop drains with the grace period" 0 "down --timeout 45" -- run_then_log stop
reset_fake
expect "restart N" 0 "restart --timeout 45 keyshard-2" -- run_then_log restart 2
expect "restart of an instance that does not exist" 1 "no keyshard-7 service" -- "$SCRIPT" restart 7
expect "restart of a non-number" 1 "instance must be a number" -- "$SCRIPT" restart two
reset_fake
expect "logs N" 0 "logs --follow --tail=200 keyshard-3" -- run_then_log logs 3
reset_fake
expect "status runs keyshard status in an instance" 0 "exec -T keyshard-1 keyshard status" \
  -- run_then_log status
reset_fake
expect "assign passes the user id" 0 "exec -T keyshard-1 keyshard assign 12345 --json" \
  -- run_then_log assign 12345 --json
expect "status with neither docker nor a native binary" 1 "no running cluster container and no native binary" \
  -- env DOCKER="$TMP/bin/no-such-docker" CARGO_TARGET_DIR="$TMP/no-target" "$SCRIPT" status

# ── rolling-restart
reset_fake
# A generous readiness timeout here: SECONDS counts whole seconds, and on a loaded CI box 1 s
# can run out between two polls of an instance that does get ready.
expect "rolling-restart: one at a time, each ready before the next" 0 "rolling restart done" \
  -- env READY_TIMEOUT_SECS=10 "$SCRIPT" rolling-restart
expect "  ... in order" 0 "readyz keyshard-4 yes|up keyshard-1|readyz keyshard-1 no|readyz keyshard-1 yes|up keyshard-2|readyz keyshard-2 no|readyz keyshard-2 yes|up keyshard-3|readyz keyshard-3 no|readyz keyshard-3 yes|up keyshard-4|readyz keyshard-4 no|readyz keyshard-4 yes" -- events
expect "  ... recreating with the drain timeout" 0 "up -d --no-build --no-deps --force-recreate --timeout 45 keyshard-1" -- cat "$FAKE_LOG"
reset_fake
touch "$FAKE_STATE/never-3"
expect "rolling-restart stops at an instance that never gets ready" 1 "keyshard-3 is not ready after 1s" \
  -- "$SCRIPT" rolling-restart
expect "  ... and leaves the next one alone" 0 "!up keyshard-4" "up keyshard-3" -- events
reset_fake
touch "$FAKE_STATE/down-2"
expect "rolling-restart refuses while an instance is down" 1 "not ready before the rolling restart: keyshard-2" \
  -- "$SCRIPT" rolling-restart
expect "  ... and restarts nothing" 0 "!up keyshard" -- events

finish
