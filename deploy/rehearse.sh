#!/usr/bin/env bash
# rehearse.sh — `./deploy-multi.sh rehearse [--json PATH] [--keep]`: the cluster as operators run
# it (the image, the keyshard-N services of docker-compose.multi.yml, the operator verbs), against
# the simulator's fake Discord and fake providers running as the compose `sim` service, under
# load, with chaos done through the Docker engine. No token or keys: the sim writes the env file.
#
#   1. build the image; start the sim service; its env overlay becomes this run's env file
#   2. ./deploy-multi.sh start (validate, build, Redis, Postgres, the instances one by one)
#   3. every instance healthy; each one got the overlay's variables; plain-text logs
#   4. the main round: REHEARSE_LOAD_SECS (60) of mixed load, a bot process killed inside
#      keyshard-2 at 20 s (the engine restarts it), ./deploy-multi.sh rolling-restart at 35 s;
#      the load lasts until the schedule is done
#   5. a second, shorter round: docker stop / start of an instance, a Redis and a Postgres restart
#   6. ./deploy-multi.sh status, every container healthy, the reports, ./deploy-multi.sh stop
#
# Exits non-zero unless, in every round, lost = 0, duplicate acks = 0, duplicate answers = 0 and
# completed = sent, and every check passed: every container became healthy, the killed bot was
# restarted by the engine, a stopped instance drained and exited 0, the rolling restart completed.
#
# The chaos schedules are lists of "SECS ACTION" entries (separated by ';'), so extending them is
# one entry: kill:N (SIGKILL the bot process inside keyshard-N), stop:N / start:N (docker stop /
# start), restart:SERVICE (docker restart of redis, postgres or keyshard-N), rolling-restart
# (./deploy-multi.sh rolling-restart). Each action is told to the simulator (`keyshard-sim note`),
# which judges routing with it.
#
# It runs as its own compose project (keyshard-rehearse), so a live cluster's containers and
# volumes are never touched; the instances' host ports (127.0.0.1:8081…) must be free.
#
# Environment knobs (all optional):
#   REHEARSE_PROJECT       compose project (default keyshard-rehearse)
#   REHEARSE_LOAD_SECS     seconds of load of the main round (default 60)
#   REHEARSE_CHAOS         the main round's schedule (default "20 kill:2; 35 rolling-restart")
#   REHEARSE_LOAD_SECS_2   seconds of load of the second round (default 30; 0 skips the round)
#   REHEARSE_CHAOS_2       its schedule (default "4 stop:3; 10 start:3; 17 restart:redis;
#                          24 restart:postgres")
#   REHEARSE_RATE          interactions per second (default 4)
#   REHEARSE_MIX           the command mix (default: every command, as the demo)
#   READY_TIMEOUT_SECS     how long instances may take to become healthy (default 180)
#   DOCKER                 docker CLI (default docker)
# and deploy-multi.sh's own (START_STAGGER_SECS, …), which the verbs it calls read.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DOCKER=${DOCKER:-docker}
PROJECT=${REHEARSE_PROJECT:-keyshard-rehearse}
COMPOSE_FILE_PATH=${KEYSHARD_COMPOSE_FILE:-docker-compose.multi.yml}
LOAD_SECS=${REHEARSE_LOAD_SECS:-60}
CHAOS_MAIN=${REHEARSE_CHAOS:-"20 kill:2; 35 rolling-restart"}
LOAD_SECS_2=${REHEARSE_LOAD_SECS_2:-30}
# `docker restart redis` keeps the data (the volume's AOF) but not the ~0.7 s it is away: a
# primary whose claim timed out meanwhile answers by the static rule with no claim key, and
# every instance must notice the restart (INFO server's run_id, see keyshard-cluster's
# cluster/restart.rs) before a fallback claims that interaction.
CHAOS_SECOND=${REHEARSE_CHAOS_2:-"4 stop:3; 10 start:3; 17 restart:redis; 24 restart:postgres"}
RATE=${REHEARSE_RATE:-4}
MIX=${REHEARSE_MIX:-ping=3,chat=3,image=2,video=1,balancer=1,assign=1,perf=1}
READY_TIMEOUT_SECS=${READY_TIMEOUT_SECS:-180}
# The instances' drain budget: their stop_grace_period (45 s).
STOP_GRACE_SECS=45
# Redis and Postgres flush and stop in seconds; 30 s is the Postgres service's own grace.
SERVICE_RESTART_SECS=30

say() { printf 'rehearse: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

JSON_OUT=
KEEP=0
while (($#)); do
  case $1 in
    --json)
      [[ -n ${2:-} ]] || die "--json needs a path"
      JSON_OUT=$2
      shift 2
      ;;
    --keep)
      KEEP=1
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument '$1' (usage: ./deploy-multi.sh rehearse [--json PATH] [--keep])" ;;
  esac
done

# ─── Plumbing ────────────────────────────────────────────────────────────────────────────────

"$DOCKER" info >/dev/null 2>&1 ||
  die "cannot reach the Docker engine (deploy/engine.sh ensure starts one; see README)."
if "$DOCKER" compose version >/dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  die "docker compose is not available (apt-get install docker-compose)."
fi

WORK=$(mktemp -d)
LEDGER_ROWS=null
LEDGER_ANSWERED=null
ENV_FILE=$WORK/env.multi
STARTED=$SECONDS

compose() {
  "${COMPOSE[@]}" --project-name "$PROJECT" --file "$COMPOSE_FILE_PATH" --env-file "$ENV_FILE" --profile sim "$@"
}

# The operator verbs, on this run's project and env file.
verb() {
  COMPOSE_PROJECT_NAME=$PROJECT KEYSHARD_ENV_FILE=$ENV_FILE KEYSHARD_COMPOSE_FILE=$COMPOSE_FILE_PATH \
    "$ROOT/deploy-multi.sh" "$@"
}

instances() {
  sed -n 's/^  keyshard-\([0-9][0-9]*\):[[:space:]]*\(#.*\)\{0,1\}$/\1/p' "$COMPOSE_FILE_PATH" | sort -n
}

container() { compose ps -q "$1" 2>/dev/null | head -n 1; }
inspect() { "$DOCKER" inspect -f "$2" "$(container "$1")" 2>/dev/null; }
health() { inspect "$1" '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}'; }
now_ms() { date +%s%3N; }

# The simulator's CLI inside the sim container (its control API is not published on the host).
sim() { "$DOCKER" exec "$(container sim)" keyshard-sim "$@"; }
note() { sim note "$@" >/dev/null || say "could not tell the simulator: $*"; }

# ─── Checks: each is recorded, and the run goes on, so one rehearsal reports every problem ────

CHECK_NAMES=()
CHECK_OK=()
CHECK_DETAIL=()
check() {
  local name=$1 ok=$2 detail=${3:-}
  CHECK_NAMES+=("$name")
  CHECK_OK+=("$ok")
  CHECK_DETAIL+=("$detail")
  if ((ok)); then
    say "ok    $name${detail:+: $detail}"
  else
    say "FAIL  $name${detail:+: $detail}"
  fi
}

# wait_until SECS COMMAND...: polls every second until COMMAND succeeds (the engine reports
# health and restarts by status only, so there is no event to wait on).
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

all_healthy() {
  local s
  for s in "$@"; do
    [[ $(health "$s") == healthy ]] || return 1
  done
}

health_line() {
  local s out=()
  for s in "$@"; do out+=("$s=$(health "$s")"); done
  echo "${out[*]}"
}

# ─── Cleanup ─────────────────────────────────────────────────────────────────────────────────

cleanup() {
  local rc=$?
  if ((KEEP)); then
    say "--keep: the rehearsal cluster is left running (project $PROJECT, env file $ENV_FILE);
    remove it with: docker-compose -p $PROJECT -f $COMPOSE_FILE_PATH --env-file $ENV_FILE --profile sim down --volumes"
  else
    compose down --volumes --remove-orphans --timeout 50 >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ─── Chaos actions ───────────────────────────────────────────────────────────────────────────

# kill:N — SIGKILL the bot process inside its container (tini stays PID 1), as a crash would:
# the container exits non-zero and the restart policy (on-failure) applies.
act_kill() {
  local n=$1 svc=keyshard-$1 before t got=
  before=$(inspect "$svc" '{{.RestartCount}}')
  t=$(now_ms)
  # shellcheck disable=SC2016 # expanded by the container's bash
  "$DOCKER" exec "$(container "$svc")" bash -c \
    'for p in /proc/[0-9]*; do [[ $(cat $p/comm 2>/dev/null) == keyshard ]] && kill -9 ${p#/proc/}; done; true'
  note "kill:$n@$t"
  restarted() {
    got=$(inspect "$svc" '{{.RestartCount}}')
    ((got > before)) && [[ $(inspect "$svc" '{{.State.Running}}') == true ]]
  }
  if wait_until 60 restarted; then
    check "$svc: the killed bot was restarted by the engine" 1 "restarts $before -> $got"
  else
    check "$svc: the killed bot was restarted by the engine" 0 "restarts still ${got:-?} after 60 s"
  fi
}

# stop:N — docker stop: SIGTERM, the drain, a clean exit inside the grace period.
act_stop() {
  local n=$1 svc=keyshard-$1 c t started code logs
  c=$(container "$svc")
  t=$(now_ms)
  note "stop:$n@$t"
  started=$SECONDS
  "$DOCKER" stop -t "$STOP_GRACE_SECS" "$c" >/dev/null
  code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$c")
  logs=$("$DOCKER" logs --tail 30 "$c" 2>&1)
  if [[ $code == 0 ]] && grep -q 'draining' <<<"$logs" && grep -q 'stopped' <<<"$logs"; then
    check "$svc: docker stop drained it and it exited 0" 1 "in $((SECONDS - started)) s"
  else
    check "$svc: docker stop drained it and it exited 0" 0 "exit $code after $((SECONDS - started)) s; last lines: $(tail -n 3 <<<"$logs" | tr '\n' ' ')"
  fi
  # restart: on-failure: a clean exit is an operator's stop, and stays down.
  local state
  state=$("$DOCKER" inspect -f '{{.State.Status}}' "$c")
  check "$svc: a clean exit stays down (on-failure)" "$([[ $state == exited ]] && echo 1 || echo 0)" "$state"
}

act_start() {
  note "start:$1@$(now_ms)"
  "$DOCKER" start "$(container "keyshard-$1")" >/dev/null
}

act_restart() {
  local svc=$1 t
  t=$(now_ms)
  note "restart:$svc@$t"
  if "$DOCKER" restart -t "$SERVICE_RESTART_SECS" "$(container "$svc")" >/dev/null; then
    check "docker restart $svc" 1
  else
    check "docker restart $svc" 0
  fi
}

act_rolling_restart() {
  local rc=0 started=$SECONDS
  note "rolling-restart@$(now_ms)"
  # Poll readiness every second (the verb's default 2 s only stretches the restart).
  READY_POLL_SECS=1 verb rolling-restart 2>&1 | sed 's/^/  | /' >&2 || rc=${PIPESTATUS[0]}
  note "rolling-restart-done@$(now_ms)"
  check "rolling-restart under load" "$((rc == 0))" "$((SECONDS - started)) s"
}

act() {
  local action=$1
  say "chaos: $action"
  case $action in
    kill:[0-9]*) act_kill "${action#kill:}" ;;
    stop:[0-9]*) act_stop "${action#stop:}" ;;
    start:[0-9]*) act_start "${action#start:}" ;;
    restart:*) act_restart "${action#restart:}" ;;
    rolling-restart) act_rolling_restart ;;
    *) check "chaos action '$action'" 0 "unknown (kill:N, stop:N, start:N, restart:SERVICE, rolling-restart)" ;;
  esac
}

# ─── One round: load from the sim, the schedule from here ───────────────────────────────────

ROUND_NAMES=()
ROUND_SCHEDULES=()
ROUND_OK=()

# round NAME SECS SCHEDULE: runs the load (for at least SECS, and until the schedule is done)
# and the schedule; the report lands in $WORK/NAME.json.
round() {
  local name=$1 secs=$2 schedule=$3 report=$WORK/$1.json log=$WORK/$1.log pid start_ms entry at action rc=0
  say "round '$name': ${secs} s of load at ${RATE}/s, chaos: ${schedule:-none}"
  sim run --attach --users 40 --rate "$RATE" --duration "$secs" --mix "$MIX" \
    --until-note chaos-done --ready-timeout "$READY_TIMEOUT_SECS" --json - >"$report" 2>"$log" &
  pid=$!
  # The sim's progress, as it comes.
  tail -n +1 -f "$log" --pid="$pid" 2>/dev/null | sed -u "s/^/  sim[$name]| /" >&2 &
  if ! wait_until "$((READY_TIMEOUT_SECS + 30))" grep -q '^load started at unix_ms=' "$log"; then
    kill "$pid" 2>/dev/null || true
  fi
  start_ms=$(sed -n 's/^load started at unix_ms=\([0-9]*\)$/\1/p' "$log" | head -n 1)
  if [[ -n $start_ms ]]; then
    while IFS= read -r entry; do
      read -r at action <<<"$entry"
      [[ -n ${action:-} ]] || continue
      local wait_ms=$((start_ms + at * 1000 - $(now_ms)))
      ((wait_ms <= 0)) || sleep "$((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))"
      act "$action"
    done < <(tr ';' '\n' <<<"$schedule" | sed 's/^ *//; s/ *$//' | grep -v '^$' | sort -n)
    note "chaos-done@$(now_ms)"
  fi
  wait "$pid" || rc=$?
  ROUND_NAMES+=("$name")
  ROUND_SCHEDULES+=("$schedule")
  if ((rc == 0)) && [[ -s $report ]]; then
    ROUND_OK+=(1)
    check "round '$name': every interaction answered exactly once" 1 "$(grep -m1 '^interactions ' "$log" || true)"
  else
    ROUND_OK+=(0)
    check "round '$name': every interaction answered exactly once" 0 "$(tail -n 1 "$log")"
  fi
}

# ─── The usage ledger ────────────────────────────────────────────────────────────────────────

# psql inside the postgres container (the sim image has none); the compose file's user and
# database, over the container's own socket.
ledger_sql() {
  "$DOCKER" exec "$(container postgres)" psql -U keyshard -d keyshard -XAtc "$1" 2>&1
}

# Every answered interaction of every round has exactly one ledger row (the table is unique on
# the interaction id, so a count equal to the answers is exactly once), and the daily rollup
# agrees with the rows. The rows are written in batches after the answer, so the count is
# polled until it reaches the answers; 30 s is several flush intervals with a Postgres restart.
ledger_check() {
  local answered=0 f rows=
  for f in "${ROUND_NAMES[@]}"; do
    [[ -s $WORK/$f.json ]] || return 0
    answered=$((answered + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["interactions"]["completed"])' "$WORK/$f.json")))
  done
  ledger_rows() {
    rows=$(ledger_sql 'SELECT count(*) FROM ledger')
    [[ $rows =~ ^[0-9]+$ ]] && ((rows >= answered))
  }
  wait_until 30 ledger_rows || true
  local rollup
  rollup=$(ledger_sql 'SELECT coalesce(sum(interactions), 0) FROM ledger_daily')
  [[ $rows =~ ^[0-9]+$ ]] && LEDGER_ROWS=$rows
  LEDGER_ANSWERED=$answered
  if [[ $rows == "$answered" && $rollup == "$rows" ]]; then
    check "the usage ledger: one row per answered interaction, the rollup agrees" 1 "$rows rows, $answered answered"
  else
    check "the usage ledger: one row per answered interaction, the rollup agrees" 0 "rows ${rows:-?}, answered $answered, rollup ${rollup:-?}"
  fi
}

# ─── The report ──────────────────────────────────────────────────────────────────────────────

json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/ }
  printf '"%s"' "$s"
}

# The main round's report with a "rehearsal" object added: the checks, the containers, and every
# round's full report.
write_json() {
  local path=$1 main=$WORK/${ROUND_NAMES[0]:-main}.json i s first=1
  {
    if [[ -s $main ]]; then
      # serde's pretty JSON ends with a line holding the closing brace.
      sed '$d' "$main"
      echo '  ,'
    else
      echo '{'
    fi
    echo '  "rehearsal": {'
    printf '    "verdict": %s,\n' "$(json_str "$VERDICT")"
    printf '    "elapsed_s": %s,\n' "$((SECONDS - STARTED))"
    printf '    "ledger": {"rows": %s, "answered": %s},\n' "$LEDGER_ROWS" "$LEDGER_ANSWERED"
    echo '    "checks": ['
    for i in "${!CHECK_NAMES[@]}"; do
      ((first)) || echo ','
      first=0
      printf '      {"check": %s, "ok": %s, "detail": %s}' "$(json_str "${CHECK_NAMES[i]}")" \
        "$( ((CHECK_OK[i])) && echo true || echo false)" "$(json_str "${CHECK_DETAIL[i]}")"
    done
    printf '\n    ],\n    "containers": [\n'
    first=1
    for s in "${CONTAINERS[@]}"; do
      ((first)) || echo ','
      first=0
      printf '      %s' "$s"
    done
    printf '\n    ],\n    "rounds": [\n'
    first=1
    for i in "${!ROUND_NAMES[@]}"; do
      ((first)) || echo ','
      first=0
      printf '      {"name": %s, "chaos": %s, "exactly_once": %s, "report": ' \
        "$(json_str "${ROUND_NAMES[i]}")" "$(json_str "${ROUND_SCHEDULES[i]}")" \
        "$( ((ROUND_OK[i])) && echo true || echo false)"
      if [[ -s $WORK/${ROUND_NAMES[i]}.json ]]; then cat "$WORK/${ROUND_NAMES[i]}.json"; else echo null; fi
      printf '      }'
    done
    printf '\n    ]\n  }\n}\n'
  } >"$path"
}

# ─── The rehearsal ───────────────────────────────────────────────────────────────────────────

mapfile -t NS < <(instances)
((${#NS[@]})) || die "no keyshard-N services in $COMPOSE_FILE_PATH"
INSTANCE_SERVICES=()
for n in "${NS[@]}"; do INSTANCE_SERVICES+=("keyshard-$n"); done

# The bootstrap env file: what compose needs before the sim has written the real one.
printf 'INSTANCE_COUNT=%s\n' "${#NS[@]}" >"$ENV_FILE"
chmod 600 "$ENV_FILE"

if [[ -n $(compose ps -q 2>/dev/null) ]]; then
  say "removing the leftovers of an earlier rehearsal (project $PROJECT)"
  compose down --volumes --remove-orphans --timeout 50 >/dev/null 2>&1 || true
fi
while IFS= read -r port; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "127.0.0.1:$port is in use (a live cluster?). The rehearsal runs the compose file as it is,
    published ports included: run it where they are free."
  fi
done < <(sed -n 's/^ *- "127\.0\.0\.1:\([0-9][0-9]*\):8080"$/\1/p' "$COMPOSE_FILE_PATH")

say "building the image"
verb build
say "starting the simulator (compose service sim)"
compose up -d --no-build sim
if wait_until 120 all_healthy sim; then
  check "the sim service became healthy" 1
else
  check "the sim service became healthy" 0 "$(health_line sim)"
  compose logs --tail 30 sim >&2 || true
  die "the simulator did not start"
fi
sim env >"$ENV_FILE.new" || die "the simulator wrote no env overlay"
mv "$ENV_FILE.new" "$ENV_FILE"
chmod 600 "$ENV_FILE"
say "env overlay ($(grep -vc '^#' "$ENV_FILE") variables) written to the run's env file"

# start: the real verb, with its validation and its spacing of starts.
if verb start; then
  check "./deploy-multi.sh start" 1
else
  check "./deploy-multi.sh start" 0
  die "start failed"
fi
if wait_until "$READY_TIMEOUT_SECS" all_healthy "${INSTANCE_SERVICES[@]}"; then
  check "every instance became healthy after start" 1 "$((SECONDS - STARTED)) s into the rehearsal"
else
  check "every instance became healthy after start" 0 "$(health_line "${INSTANCE_SERVICES[@]}")"
fi

# Env wiring: every overlay variable reaches each instance: X as X, and its own X_n either as X
# (the keys, renamed by the compose file) or as X_n (DISCORD_API_BASE_n, which the bot reads
# under its own INSTANCE_ID).
for n in "${NS[@]}"; do
  container_env=$("$DOCKER" inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$(container "keyshard-$n")")
  missing=()
  while IFS='=' read -r key value; do
    [[ -z $key || $key == \#* ]] && continue
    if [[ $key =~ ^(.*)_([0-9]+)$ ]]; then
      [[ ${BASH_REMATCH[2]} == "$n" ]] || continue
      grep -qxF -- "$key=$value" <<<"$container_env" && continue
      key=${BASH_REMATCH[1]}
    fi
    grep -qxF -- "$key=$value" <<<"$container_env" || missing+=("$key")
  done <"$ENV_FILE"
  if ((${#missing[@]})); then
    check "keyshard-$n got every overlay variable" 0 "missing or different: ${missing[*]}"
  else
    check "keyshard-$n got every overlay variable" 1
  fi
done
esc=$(printf '\033')
colour_lines=$("$DOCKER" logs "$(container keyshard-1)" 2>&1 | grep -c "$esc" || true)
check "the instances log plain text (no escape codes)" "$((colour_lines == 0))" "$colour_lines lines with escape codes"

round main "$LOAD_SECS" "$CHAOS_MAIN"
if ((LOAD_SECS_2 > 0)); then
  round second "$LOAD_SECS_2" "$CHAOS_SECOND"
fi

ALL_SERVICES=(redis postgres sim "${INSTANCE_SERVICES[@]}")
if wait_until "$READY_TIMEOUT_SECS" all_healthy "${ALL_SERVICES[@]}"; then
  check "every container is healthy at the end" 1
else
  check "every container is healthy at the end" 0 "$(health_line "${ALL_SERVICES[@]}")"
fi
say "status"
status_out=$(verb status 2>&1) || true
while IFS= read -r line; do say "  | $line"; done <<<"$status_out"
alive="${#NS[@]} instances · ${#NS[@]} alive"
if grep -qF "$alive" <<<"$status_out"; then
  check "./deploy-multi.sh status: $alive" 1
else
  check "./deploy-multi.sh status: $alive" 0 "$(grep -m1 'instances ·' <<<"$status_out" || echo 'no cluster line')"
fi
ledger_check
CONTAINERS=()
for s in "${ALL_SERVICES[@]}"; do
  CONTAINERS+=("{\"service\": \"$s\", \"health\": \"$(health "$s")\", \"restarts\": $(inspect "$s" '{{.RestartCount}}' || echo null)}")
done

# On a failure, every container's log goes next to the report, before stop removes them.
if [[ -n $JSON_OUT ]] && [[ " ${CHECK_OK[*]} " == *" 0 "* ]]; then
  LOG_DIR=${JSON_OUT%.json}.logs
  mkdir -p "$LOG_DIR"
  for s in "${ALL_SERVICES[@]}"; do
    "$DOCKER" logs "$(container "$s")" >"$LOG_DIR/$s.log" 2>&1 || true
  done
  say "a check failed: the containers' logs are in $LOG_DIR"
fi

if ((!KEEP)); then
  if verb stop; then
    left=$("$DOCKER" ps -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
    check "./deploy-multi.sh stop leaves nothing running" "$((left == 0))" "$left running"
  else
    check "./deploy-multi.sh stop" 0
  fi
fi

FAILED=()
for i in "${!CHECK_NAMES[@]}"; do
  ((CHECK_OK[i])) || FAILED+=("${CHECK_NAMES[i]}")
done
VERDICT=ok
((${#FAILED[@]} == 0)) || VERDICT=FAILED
if [[ -n $JSON_OUT ]]; then
  write_json "$JSON_OUT"
  say "report written to $JSON_OUT"
fi
printf '\nrehearsal: %s in %d s (%d checks, %d failed)\n' "$VERDICT" "$((SECONDS - STARTED))" \
  "${#CHECK_NAMES[@]}" "${#FAILED[@]}"
for f in "${FAILED[@]}"; do printf '  FAILED: %s\n' "$f"; done
[[ $VERDICT == ok ]]
