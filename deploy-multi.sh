#!/usr/bin/env bash
# deploy-multi.sh — run a keyshard cluster with docker compose and check its configuration.
# `./deploy-multi.sh help` lists the verbs. What CI runs is deploy/ci.sh (`test` calls it).
#
# Environment knobs (all optional):
#   KEYSHARD_ENV_FILE      env file of the cluster (default .env.multi; the bot reads the same name)
#   KEYSHARD_COMPOSE_FILE  compose file (default docker-compose.multi.yml)
#   COMPOSE_PROJECT_NAME   compose project (default keyshard)
#   DOCKER                 docker CLI to use (default docker)
#   READY_TIMEOUT_SECS     how long rolling-restart waits for an instance's /readyz (default 180)
#   READY_POLL_SECS        how often it asks (default 2)
#   SETTLE_SECS            pause after an instance is ready, before the next goes (default 2)
#   START_STAGGER_SECS     pause between instance starts, so IDENTIFYs don't collide (default 6)
#   CARGO_TARGET_DIR       where cargo builds (default ./target)
#   KEYSHARD_BIN           keyshard binary for validate (default: a local build, else the image)
#   KEYSHARD_IMAGE         the image (default keyshard:local, as in the compose file)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

ENV_FILE=${KEYSHARD_ENV_FILE:-.env.multi}
COMPOSE_FILE_PATH=${KEYSHARD_COMPOSE_FILE:-docker-compose.multi.yml}
PROJECT=${COMPOSE_PROJECT_NAME:-keyshard}
DOCKER=${DOCKER:-docker}
READY_TIMEOUT_SECS=${READY_TIMEOUT_SECS:-180}
READY_POLL_SECS=${READY_POLL_SECS:-2}
# A few heartbeats (HEARTBEAT_MS, 1 s by default), so the peers' membership snapshots see the
# restarted instance alive before the next one leaves.
SETTLE_SECS=${SETTLE_SECS:-2}
START_STAGGER_SECS=${START_STAGGER_SECS:-6}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# The drain budget: the instances' stop_grace_period in the compose file (45 s).
STOP_TIMEOUT_SECS=$(sed -n 's/^ *stop_grace_period: *\([0-9][0-9]*\)s *$/\1/p' "$COMPOSE_FILE_PATH" 2>/dev/null | head -n 1)
STOP_TIMEOUT_SECS=${STOP_TIMEOUT_SECS:-45}

say() { printf 'deploy-multi: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}
# shellcheck source=deploy/apt.sh
source "$ROOT/deploy/apt.sh"

usage() {
  cat <<'EOF'
Usage: ./deploy-multi.sh VERB [ARGS]

Cluster (docker compose, reads .env.multi):
  start                validate .env.multi, build the image, start Redis, Postgres and the instances
                       one by one
  stop                 stop and remove the containers; each instance drains first (Redis data is kept)
  restart [N]          restart instance N, or every instance at once (use rolling-restart for no gap)
  rolling-restart      recreate the instances one at a time: SIGTERM (the instance drains and
                       leaves, peers take its users), start, wait for /readyz = 200, next
  build                build the image (then rolling-restart deploys it)
  status [--json]      containers (health, restarts) and the cluster view from Redis (keyshard status)
  assign USER_ID       which instance serves a user, and why (keyshard assign)
  logs [N]             follow the logs of instance N, or of everything

Checks and development:
  validate [FILE]      check an env file (default .env.multi) as every instance will read it
                       (keyshard config check, from a local build or the image): token and keys
                       missing or placeholders, a key shared by two instances, INSTANCE_COUNT
                       against the compose services, numbers and formats. Exits non-zero on any
                       problem.
  demo                 build and run the simulator scenario: no Discord token or API keys needed
  rehearse [--json PATH] [--keep]
                       the compose services themselves, under load, against the simulator as the
                       compose `sim` service (no token or keys): build, start, 60 s of mixed load
                       with a bot killed inside keyshard-2 and a rolling restart, then docker
                       stop/start and a Postgres restart; status, the report, stop. Exits
                       non-zero unless every interaction was answered exactly once and every
                       container became healthy (deploy/rehearse.sh; its own compose project)
  test                 what CI runs (deploy/ci.sh): fmt, clippy, tests, shellcheck, the Docker
                       engine and image, the deploy shell tests
  help                 this text
EOF
}

# ─── Helpers ─────────────────────────────────────────────────────────────────────────────────

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# Instance numbers N of the keyshard-N services in the compose file, ascending, one per line.
# Read from the file itself, so the verbs that name instances need no compose parser.
compose_instances() {
  [[ -f $COMPOSE_FILE_PATH ]] || return 0
  sed -n 's/^  keyshard-\([0-9][0-9]*\):[[:space:]]*\(#.*\)\{0,1\}$/\1/p' "$COMPOSE_FILE_PATH" | sort -n
}

# ─── Docker plumbing ─────────────────────────────────────────────────────────────────────────

COMPOSE=()

require_env_file() {
  [[ -f $ENV_FILE ]] && return 0
  die "$ENV_FILE not found. Create it from the example, fill in the token and keys, and check it:
    cp .env.multi.example $ENV_FILE && \$EDITOR $ENV_FILE && ./deploy-multi.sh validate"
}

# Sets COMPOSE when docker, compose and the engine are all there; else sets DOCKER_PROBLEM to
# why, and fails.
DOCKER_PROBLEM=
detect_docker() {
  DOCKER_PROBLEM=$(docker_problem) || true
  [[ -z $DOCKER_PROBLEM ]] || return 1
  if "$DOCKER" compose version >/dev/null 2>&1; then
    COMPOSE=("$DOCKER" compose)
  else
    COMPOSE=(docker-compose)
  fi
}

# Prints what keeps the docker verbs from working, or nothing.
docker_problem() {
  if [[ ! -f $COMPOSE_FILE_PATH ]]; then
    echo "$COMPOSE_FILE_PATH not found (run from the keyshard checkout)."
    return 1
  fi
  if ! command -v "$DOCKER" >/dev/null 2>&1; then
    echo "docker is not installed (no '$DOCKER' on PATH). Install Docker Engine with the compose
    plugin (https://docs.docker.com/engine/install/), or run the instances natively (README.md)."
    return 1
  fi
  if ! "$DOCKER" compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    echo "docker compose is not available. Install the compose plugin (apt-get install
    docker-compose-plugin) or Debian's docker-compose package."
    return 1
  fi
  if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "cannot reach the Docker engine. Is it running (sudo systemctl start docker), and may this
    user use it (sudo usermod -aG docker \$USER, then log in again)?"
    return 1
  fi
}

require_docker() {
  detect_docker || die "$DOCKER_PROBLEM"
}

compose() {
  "${COMPOSE[@]}" --project-name "$PROJECT" --file "$COMPOSE_FILE_PATH" --env-file "$ENV_FILE" "$@"
}

# The docker verbs share one preamble: env file first (cheap, and the likelier mistake), then docker.
docker_ready() {
  require_env_file
  require_docker
}

instance_services() {
  local n
  for n in $(compose_instances); do
    printf 'keyshard-%s\n' "$n"
  done
}

require_instance() {
  local n=$1
  is_uint "$n" || die "instance must be a number, got '$n'"
  compose_instances | grep -qx "$n" ||
    die "there is no keyshard-$n service in $COMPOSE_FILE_PATH (instances: $(compose_instances | tr '\n' ' '))"
}

container_of() { compose ps -q "$1" 2>/dev/null | head -n 1; }

# 0 when the instance's own /readyz answers 200, probed inside its container.
instance_ready() {
  compose exec -T "keyshard-$1" keyshard-readyz >/dev/null 2>&1
}

wait_ready() {
  local n=$1 deadline=$((SECONDS + READY_TIMEOUT_SECS))
  until instance_ready "$n"; do
    ((SECONDS < deadline)) || return 1
    sleep "$READY_POLL_SECS"
  done
}

# ─── Verbs: cluster ──────────────────────────────────────────────────────────────────────────

cmd_build() {
  docker_ready
  say "building the image"
  compose build keyshard-1
}

cmd_start() {
  require_env_file
  # Validate before anything else when a local binary can; otherwise the image checks, so build
  # it first.
  if local_keyshard >/dev/null; then
    cmd_validate "$ENV_FILE" || die "not starting: fix the problems above in $ENV_FILE first."
    require_docker
    cmd_build
  else
    require_docker
    cmd_build
    cmd_validate "$ENV_FILE" || die "not starting: fix the problems above in $ENV_FILE first."
  fi
  say "starting redis and postgres"
  compose up -d --no-build redis postgres
  # One instance at a time: each start is a gateway IDENTIFY, and Discord allows a bot only
  # max_concurrency (usually 1) of those per 5 s; a crowd of them gets sessions invalidated.
  local n
  for n in $(compose_instances); do
    say "starting keyshard-$n"
    compose up -d --no-build "keyshard-$n"
    sleep "$START_STAGGER_SECS"
  done
  say "started. Watch them become ready: ./deploy-multi.sh status"
}

cmd_stop() {
  docker_ready
  say "stopping (each instance drains first, up to ${STOP_TIMEOUT_SECS}s); Redis data stays in its volume"
  compose --profile sim down --timeout "$STOP_TIMEOUT_SECS"
}

cmd_restart() {
  docker_ready
  if [[ -n ${1:-} ]]; then
    require_instance "$1"
    say "restarting keyshard-$1 (it drains first; its users go to peers meanwhile)"
    compose restart --timeout "$STOP_TIMEOUT_SECS" "keyshard-$1"
  else
    say "restarting every instance at once; for no gap in service use: ./deploy-multi.sh rolling-restart"
    # shellcheck disable=SC2046 # one word per service name
    compose restart --timeout "$STOP_TIMEOUT_SECS" $(instance_services)
  fi
}

cmd_rolling_restart() {
  docker_ready
  local n not_ready=()
  # Restarting one instance while another is already down leaves its users with fewer peers;
  # refuse rather than make an outage worse.
  for n in $(compose_instances); do
    instance_ready "$n" || not_ready+=("keyshard-$n")
  done
  if ((${#not_ready[@]})); then
    die "not ready before the rolling restart: ${not_ready[*]}. Fix them first (./deploy-multi.sh status, logs N)."
  fi
  for n in $(compose_instances); do
    say "keyshard-$n: draining and recreating"
    # Recreate rather than restart, so a new image or a changed .env.multi takes effect. Compose
    # stops the old container with SIGTERM: the instance marks itself draining (peers take its
    # users at once), finishes the acks in hand and leaves; queued jobs stay in its stream.
    compose up -d --no-build --no-deps --force-recreate --timeout "$STOP_TIMEOUT_SECS" "keyshard-$n"
    if ! wait_ready "$n"; then
      die "keyshard-$n is not ready after ${READY_TIMEOUT_SECS}s; stopping the rolling restart here.
    The other instances keep serving its users. Look at: ./deploy-multi.sh logs $n"
    fi
    say "keyshard-$n: ready"
    sleep "$SETTLE_SECS"
  done
  say "rolling restart done"
}

running() {
  local container
  container=$(container_of "$1")
  [[ -n $container ]] && [[ $("$DOCKER" inspect -f '{{.State.Running}}' "$container" 2>/dev/null) == true ]]
}

# Runs a read-only keyshard CLI verb (status, assign) against the cluster's Redis: inside a
# running instance container; or, when no instance runs but Redis does, in a one-off container
# (compose's Redis is not published on the host); else with the native binary, which reads the
# same env file.
keyshard_cli() {
  local native=$TARGET_DIR/release/keyshard svc
  if [[ -f $ENV_FILE ]] && detect_docker; then
    for svc in $(instance_services); do
      if running "$svc"; then
        compose exec -T "$svc" keyshard "$@"
        return
      fi
    done
    if running redis; then
      svc=$(instance_services | head -n 1)
      compose run --rm --no-deps -T "$svc" "$@"
      return
    fi
  fi
  if [[ -x $native ]]; then
    KEYSHARD_ENV_FILE=$ENV_FILE "$native" "$@"
    return
  fi
  die "no running cluster container and no native binary at $native
    (start the cluster, or build the binary: cargo build --release -p keyshard-bot)."
}

cmd_status() {
  if [[ ${1:-} != --json ]] && [[ -f $ENV_FILE ]] && detect_docker; then
    compose --profile sim ps
    local ids
    ids=$(compose --profile sim ps -q)
    if [[ -n $ids ]]; then
      echo
      # shellcheck disable=SC2086 # one word per container id
      "$DOCKER" inspect -f '{{.Name}}  state={{.State.Status}}{{if .State.Health}}  health={{.State.Health.Status}}{{end}}  restarts={{.RestartCount}}' $ids |
        sed 's|^/||'
    fi
    echo
  fi
  keyshard_cli status "$@"
}

cmd_assign() {
  [[ -n ${1:-} ]] || die "usage: ./deploy-multi.sh assign USER_ID [--json]"
  keyshard_cli assign "$@"
}

cmd_logs() {
  docker_ready
  if [[ -n ${1:-} ]]; then
    require_instance "$1"
    compose logs --follow --tail=200 "keyshard-$1"
  else
    compose --profile sim logs --follow --tail=200
  fi
}

# ─── Verb: validate ──────────────────────────────────────────────────────────────────────────
#
# The rules live in the bot: `keyshard config check` loads the file as each instance 1..N will
# load it (the same Config code that refuses a bad value at start), then checks what spans the
# instances (a key shared by two, a provider on some only, INSTANCE_COUNT against the compose
# services). It runs from a local build when there is one, else from the image, so a host with
# neither cargo nor the image can still check after `./deploy-multi.sh build`.

# A keyshard binary that knows `config check`: KEYSHARD_BIN, else the newer of the release and
# debug builds, else one on PATH. A build from before the verb existed is passed over.
local_keyshard() {
  local candidates=() c
  if [[ -n ${KEYSHARD_BIN:-} ]]; then
    candidates=("$KEYSHARD_BIN")
  else
    local release=$TARGET_DIR/release/keyshard debug=$TARGET_DIR/debug/keyshard
    if [[ -x $release && -x $debug && $debug -nt $release ]]; then
      candidates=("$debug" "$release")
    else
      candidates=("$release" "$debug")
    fi
    c=$(command -v keyshard 2>/dev/null) && candidates+=("$c")
  fi
  for c in "${candidates[@]}"; do
    if [[ -x $c ]] && "$c" config check --help >/dev/null 2>&1; then
      printf '%s' "$c"
      return 0
    fi
  done
  return 1
}

IMAGE=${KEYSHARD_IMAGE:-keyshard:local}

image_present() { detect_docker && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; }

cmd_validate() {
  local file=${1:-$ENV_FILE} bin
  if [[ ! -f $file ]]; then
    say "validate: $file not found. Create it from the example: cp .env.multi.example $file"
    return 1
  fi
  if bin=$(local_keyshard); then
    "$bin" config check --env-file "$file" --compose "$COMPOSE_FILE_PATH"
    return
  fi
  if ! image_present; then
    say "validate needs the keyshard binary or the image $IMAGE, and neither is here.
    Build one: ./deploy-multi.sh build (Docker), or cargo build --release -p keyshard-bot"
    return 1
  fi
  # The image: no network, read-only, as the caller (the file is usually mode 600), with the two
  # files mounted at their own paths so the messages name them as the operator does.
  local abs_file abs_compose mounts=()
  abs_file=$(cd "$(dirname "$file")" && pwd)/$(basename "$file")
  mounts+=(-v "$abs_file:$abs_file:ro")
  if [[ -f $COMPOSE_FILE_PATH ]]; then
    abs_compose=$(cd "$(dirname "$COMPOSE_FILE_PATH")" && pwd)/$(basename "$COMPOSE_FILE_PATH")
    mounts+=(-v "$abs_compose:$abs_compose:ro")
  fi
  "$DOCKER" run --rm --network none --read-only --user "$(id -u):$(id -g)" "${mounts[@]}" \
    -w "$PWD" --entrypoint keyshard "$IMAGE" \
    config check --env-file "$file" --compose "$COMPOSE_FILE_PATH"
}

# ─── Verb: demo ──────────────────────────────────────────────────────────────────────────────

require_cargo() {
  command -v cargo >/dev/null 2>&1 ||
    die "cargo is missing. Install Rust with rustup (https://rustup.rs), then run this again."
}

# True when the workspace declares a binary target of that name.
has_bin_target() {
  cargo metadata --no-deps --format-version 1 2>/dev/null |
    grep -q "\"kind\":\[\"bin\"\],\"crate_types\":\[\"bin\"\],\"name\":\"$1\""
}

cmd_demo() {
  require_cargo
  if ! has_bin_target keyshard-sim; then
    die "the demo runs the simulator (keyshard-sim), which is not in this tree yet: it arrives with
    the simulator work. Meanwhile: ./deploy-multi.sh test"
  fi
  ensure_command redis-server redis-server
  ensure_postgres # the simulator runs with the usage ledger on a private Postgres
  say "building keyshard and keyshard-sim (release)"
  cargo build --release --locked -p keyshard-bot -p keyshard-sim
  exec "$TARGET_DIR/release/keyshard-sim" demo "$@"
}

# ─── Verb: rehearse ──────────────────────────────────────────────────────────────────────────

# The rehearsal drives the other verbs from outside (deploy/rehearse.sh), on its own compose
# project and the env file the simulator writes.
cmd_rehearse() { exec "$ROOT/deploy/rehearse.sh" "$@"; }

# ─── Verb: test ──────────────────────────────────────────────────────────────────────────────

# What CI runs lives in deploy/ci.sh; this verb is a shortcut to it.
cmd_test() { exec "$ROOT/deploy/ci.sh" "$@"; }

# ─── Dispatch ────────────────────────────────────────────────────────────────────────────────

main() {
  local verb=${1:-}
  shift || true
  case $verb in
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    restart) cmd_restart "$@" ;;
    rolling-restart) cmd_rolling_restart ;;
    build) cmd_build ;;
    status) cmd_status "$@" ;;
    assign) cmd_assign "$@" ;;
    logs) cmd_logs "$@" ;;
    validate) cmd_validate "$@" ;;
    demo) cmd_demo "$@" ;;
    rehearse) cmd_rehearse "$@" ;;
    test) cmd_test "$@" ;;
    help | -h | --help) usage ;;
    '')
      usage >&2
      exit 2
      ;;
    *)
      say "unknown verb '$verb'"
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
