#!/usr/bin/env bash
# deploy-multi.sh — run a keyshard cluster with docker compose, check its configuration, and run
# what CI runs. `./deploy-multi.sh help` lists the verbs.
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

usage() {
  cat <<'EOF'
Usage: ./deploy-multi.sh VERB [ARGS]

Cluster (docker compose, reads .env.multi):
  start                validate .env.multi, build the image, start Redis and the instances one by one
  stop                 stop and remove the containers; each instance drains first (Redis data is kept)
  restart [N]          restart instance N, or every instance at once (use rolling-restart for no gap)
  rolling-restart      recreate the instances one at a time: SIGTERM (the instance drains and
                       leaves, peers take its users), start, wait for /readyz = 200, next
  build                build the image (then rolling-restart deploys it)
  status [--json]      containers (health, restarts) and the cluster view from Redis (keyshard status)
  assign USER_ID       which instance serves a user, and why (keyshard assign)
  logs [N]             follow the logs of instance N, or of everything

Checks and development:
  validate [FILE]      check an env file (default .env.multi): token and keys missing or placeholders,
                       a key shared by two instances, INSTANCE_COUNT against the compose services,
                       numbers and formats. Exits non-zero on any problem.
  demo                 build and run the simulator scenario: no Discord token or API keys needed
  test                 what CI runs: fmt, clippy, tests, shellcheck, compose config, validate tests
  help                 this text
EOF
}

# ─── Helpers ─────────────────────────────────────────────────────────────────────────────────

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# Instance numbers N of the keyshard-N services in the compose file, ascending, one per line.
# Read from the file itself so that `validate` needs neither docker nor a compose parser.
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
  if ! cmd_validate "$ENV_FILE"; then
    die "not starting: fix the problems above in $ENV_FILE first."
  fi
  require_docker
  cmd_build
  say "starting redis"
  compose up -d --no-build redis
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
# Pure bash on purpose: it runs before anything is built or started, on a host that may have
# neither cargo nor docker. The file is parsed, never sourced (it is data, not a script).

# Variables the keyshard binary reads. Each may also appear as X_<n> (INSTANCE_ID excepted).
KNOWN_VARS=(
  DISCORD_TOKEN INSTANCE_COUNT REDIS_URL CLUSTER_NAME ADMIN_USER_IDS GUILD_ID DISCORD_API_BASE
  HTTP_BIND OVERLOAD_WAIT_SECS HEARTBEAT_MS DEAD_AFTER_MS CLAIM_GRACE_MS CLAIM_STEP_MS TAKEOVER
  RUST_LOG CHAT_MEMORY_TURNS CHAT_MEMORY_TTL_SECS VIDEO_POLL_MS
  SHARD_COUNT IDENTIFY_WINDOW_MS IDENTIFY_RESERVE RESTART_BACKOFF_MS RESTART_BACKOFF_MAX_MS
  OPENAI_API_KEY OPENAI_BASE_URL OPENAI_CHAT_MODEL OPENAI_IMAGE_MODEL OPENAI_RPM OPENAI_WINDOW_SECS
  OPENAI_IMAGE_RPM OPENAI_MAX_TOKENS OPENAI_TPM OPENAI_RPD OPENAI_CONCURRENCY OPENAI_TIMEOUT_SECS
  MINIMAX_API_KEY MINIMAX_BASE_URL MINIMAX_IMAGE_MODEL MINIMAX_VIDEO_MODEL MINIMAX_RPM
  MINIMAX_WINDOW_SECS MINIMAX_TPM MINIMAX_VIDEO_RPM MINIMAX_RPD MINIMAX_CONCURRENCY
  MINIMAX_TIMEOUT_SECS
  STABILITY_API_KEY STABILITY_BASE_URL STABILITY_RPM STABILITY_WINDOW_SECS STABILITY_TPM
  STABILITY_RPD STABILITY_CONCURRENCY STABILITY_TIMEOUT_SECS
)
PROVIDERS=(OPENAI MINIMAX STABILITY)
declare -A PROVIDER_NAME=([OPENAI]=OpenAI [MINIMAX]=MiniMax [STABILITY]=Stability)
# Whole-number variables and their smallest sensible value.
declare -A MIN_VALUE=(
  [INSTANCE_COUNT]=1 [HEARTBEAT_MS]=1 [DEAD_AFTER_MS]=1 [CLAIM_GRACE_MS]=0 [CLAIM_STEP_MS]=0
  [CHAT_MEMORY_TURNS]=1 [CHAT_MEMORY_TTL_SECS]=1 [VIDEO_POLL_MS]=1
  [IDENTIFY_WINDOW_MS]=1 [IDENTIFY_RESERVE]=0 [RESTART_BACKOFF_MS]=0 [RESTART_BACKOFF_MAX_MS]=0
  [OPENAI_RPM]=1 [OPENAI_WINDOW_SECS]=1 [OPENAI_IMAGE_RPM]=1 [OPENAI_MAX_TOKENS]=1 [OPENAI_TPM]=1
  [OPENAI_RPD]=1 [OPENAI_CONCURRENCY]=1 [OPENAI_TIMEOUT_SECS]=1
  [MINIMAX_RPM]=1 [MINIMAX_WINDOW_SECS]=1 [MINIMAX_TPM]=1 [MINIMAX_VIDEO_RPM]=1 [MINIMAX_RPD]=1
  [MINIMAX_CONCURRENCY]=1 [MINIMAX_TIMEOUT_SECS]=1
  [STABILITY_RPM]=1 [STABILITY_WINDOW_SECS]=1 [STABILITY_TPM]=1 [STABILITY_RPD]=1
  [STABILITY_CONCURRENCY]=1 [STABILITY_TIMEOUT_SECS]=1
)

declare -A VAL=() LINE=()
KEYS=() # the file's variables in the order they appear
PROBLEMS=()
WARNINGS=()
problem() { PROBLEMS+=("$*"); }
warning() { WARNINGS+=("$*"); }

is_known() {
  local k
  for k in "${KNOWN_VARS[@]}"; do
    [[ $k == "$1" ]] && return 0
  done
  return 1
}

# The same rule as the bot's Secret::looks_like_placeholder (keyshard-providers/src/secret.rs):
# empty, your…, CHANGE_ME/changeme, placeholder, replace, <…>, …, or only x, - and *.
is_placeholder() {
  local v lower
  v=$(trim "$1")
  lower=${v,,}
  [[ -z $v || $lower == your* || $lower == *change_me* || $lower == *changeme* ||
    $lower == *placeholder* || $lower == *replace* || ($v == '<'*'>') || $lower == *... ||
    $lower =~ ^[-x*]+$ ]]
}

trim() {
  local s=$1
  s=${s#"${s%%[![:space:]]*}"}
  s=${s%"${s##*[![:space:]]}"}
  printf '%s' "$s"
}

# Reads KEY=VALUE lines the way dotenvy and compose do: comments, blank lines, `export `, quotes,
# and ` # comment` after an unquoted value. CRLF line ends are tolerated.
parse_env_file() {
  local file=$1 lineno=0 line key raw value
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=$(trim "${line%$'\r'}")
    [[ -z $line || $line == '#'* ]] && continue
    line=${line#export }
    if [[ ! $line =~ ^([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*=(.*)$ ]]; then
      problem "line $lineno is not KEY=VALUE"
      continue
    fi
    key=${BASH_REMATCH[1]}
    raw=$(trim "${BASH_REMATCH[2]}")
    if [[ $raw =~ ^\"(.*)\"$ || $raw =~ ^\'(.*)\'$ ]]; then
      value=${BASH_REMATCH[1]}
    else
      value=$(trim "${raw%%[[:space:]]#*}")
    fi
    if [[ -n ${LINE[$key]:-} ]]; then
      problem "$key is set twice (lines ${LINE[$key]} and $lineno): the bot keeps the first, docker compose the last; keep one"
    fi
    [[ -n ${LINE[$key]:-} ]] || KEYS+=("$key")
    VAL[$key]=$value
    LINE[$key]=$lineno
  done <"$file"
}

# Set and not empty (an empty value counts as unset, for the bot as for compose).
has() { [[ -n ${VAL[$1]:-} ]]; }

# The variable instance n reads for X: X_n when set, else X (the bot's per-instance rule).
source_of() {
  if has "$1_$2"; then
    printf '%s' "$1_$2"
  else
    printf '%s' "$1"
  fi
}

check_number() {
  local name=$1 base=$2 v=${VAL[$1]}
  local min=${MIN_VALUE[$base]}
  if ! is_uint "$v"; then
    problem "$name=$v is not a whole number"
  elif ((${#v} > 9)); then
    problem "$name=$v is too large"
  elif ((10#$v < min)); then
    problem "$name=$v must be at least $min"
  fi
}

# Format checks of one set variable, by the variable it stands for.
check_value() {
  local name=$1 base=$2 v=${VAL[$1]}
  [[ -n $v ]] || return 0
  if [[ -n ${MIN_VALUE[$base]:-} ]]; then
    check_number "$name" "$base"
    return
  fi
  case $base in
    OVERLOAD_WAIT_SECS)
      [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] || problem "$name=$v is not a number of seconds"
      ;;
    TAKEOVER)
      [[ ${v,,} =~ ^(on|off|true|false|1|0)$ ]] || problem "$name=$v must be on or off"
      ;;
    GUILD_ID)
      is_uint "$v" || problem "$name=$v is not a guild id (digits only)"
      ;;
    ADMIN_USER_IDS)
      [[ $v =~ ^[[:space:]]*[0-9]+[[:space:]]*(,[[:space:]]*[0-9]+[[:space:]]*)*,?$ ]] ||
        problem "$name must be user ids separated by commas (digits only), got '$v'"
      ;;
    REDIS_URL)
      # The URL may hold a password: name the variable, never print the value.
      [[ $v =~ ^(redis|rediss|redis\+unix|unix)://.+ ]] ||
        problem "$name is not a Redis URL (expected redis://[:password@]host:port[/db])"
      ;;
    HTTP_BIND)
      if [[ ! $v =~ :([0-9]+)$ ]] || ((10#${BASH_REMATCH[1]} < 1 || 10#${BASH_REMATCH[1]} > 65535)); then
        problem "$name=$v is not host:port (e.g. 0.0.0.0:8080)"
      fi
      ;;
    DISCORD_API_BASE | *_BASE_URL)
      [[ $v =~ ^https?://[^[:space:]]+$ ]] || problem "$name=$v must start with http:// or https://"
      ;;
    CLUSTER_NAME)
      [[ $v =~ ^[^[:space:]]+$ ]] || problem "$name='$v' must be one word (it prefixes Redis keys)"
      ;;
  esac
}

cmd_validate() {
  local file=${1:-$ENV_FILE}
  VAL=()
  LINE=()
  KEYS=()
  PROBLEMS=()
  WARNINGS=()
  if [[ ! -f $file ]]; then
    say "validate: $file not found. Create it from the example: cp .env.multi.example $file"
    return 1
  fi
  parse_env_file "$file"

  # ── Instance count against the compose services
  local count=4 services n
  if has INSTANCE_COUNT; then
    if is_uint "${VAL[INSTANCE_COUNT]}" && ((10#${VAL[INSTANCE_COUNT]} >= 1 && ${#VAL[INSTANCE_COUNT]} < 4)); then
      count=$((10#${VAL[INSTANCE_COUNT]}))
    else
      problem "INSTANCE_COUNT=${VAL[INSTANCE_COUNT]} is not a whole number between 1 and 999"
    fi
  fi
  services=$(compose_instances | tr '\n' ' ')
  services=${services% }
  if [[ ! -f $COMPOSE_FILE_PATH ]]; then
    warning "$COMPOSE_FILE_PATH not found: INSTANCE_COUNT not compared with the compose services"
  elif [[ $services != "$(seq -s ' ' 1 "$count")" ]]; then
    problem "INSTANCE_COUNT=$count but $COMPOSE_FILE_PATH defines the services keyshard-{${services// /,}}; they must be keyshard-1 … keyshard-$count"
  fi
  if has INSTANCE_ID; then
    warning "INSTANCE_ID is set in $file; compose gives each service its own (1..$count) and ignores it"
  fi

  # ── Every variable: known name, per-instance form, format
  local key base
  for key in "${KEYS[@]}"; do
    [[ $key == INSTANCE_ID ]] && continue
    if is_known "$key"; then
      check_value "$key" "$key"
    elif [[ $key =~ ^(.+)_([0-9]+)$ ]] && is_known "${BASH_REMATCH[1]}"; then
      base=${BASH_REMATCH[1]}
      n=$((10#${BASH_REMATCH[2]}))
      if ((n < 1 || n > count)); then
        warning "$key is for instance $n, but INSTANCE_COUNT=$count: nothing reads it"
      elif [[ $base != *_API_KEY && $base != DISCORD_API_BASE ]] && has "$key"; then
        warning "$key is read by natively started instances only; docker-compose.multi.yml passes $base to every instance"
      fi
      check_value "$key" "$base"
    else
      warning "$key is not a keyshard variable (a typo?); nothing reads it"
    fi
  done

  # ── The Discord token: present, real, the same bot everywhere
  local src first_token='' token_differs=0
  local -A reported=()
  for n in $(seq 1 "$count"); do
    src=$(source_of DISCORD_TOKEN "$n")
    if ! has "$src"; then
      [[ -n ${reported[$src]:-} ]] || problem "$src is missing: the bot token, from the Discord developer portal"
      reported[$src]=1
    elif is_placeholder "${VAL[$src]}"; then
      [[ -n ${reported[$src]:-} ]] || problem "$src is a placeholder: put the bot token from the Discord developer portal"
      reported[$src]=1
    elif [[ -z $first_token ]]; then
      first_token=${VAL[$src]}
    elif [[ ${VAL[$src]} != "$first_token" ]]; then
      token_differs=1
    fi
  done
  if ((token_differs)); then
    problem "the instances use different DISCORD_TOKEN values; they must all run the same bot"
  fi

  # ── Provider keys: each instance its own, no placeholders, no sharing
  local p var enabled any_enabled=0 missing_on shared_by names
  local -A by_value=()
  for p in "${PROVIDERS[@]}"; do
    var=${p}_API_KEY
    enabled=0
    missing_on=()
    shared_by=()
    by_value=()
    for n in $(seq 1 "$count"); do
      src=$(source_of "$var" "$n")
      if ! has "$src"; then
        missing_on+=("$n")
        continue
      fi
      enabled=$((enabled + 1))
      if is_placeholder "${VAL[$src]}"; then
        [[ -n ${reported[$src]:-} ]] || problem "$src is a placeholder: put instance $n's own ${PROVIDER_NAME[$p]} key (or remove every ${var}_N line to run without ${PROVIDER_NAME[$p]})"
        reported[$src]=1
        continue
      fi
      [[ $src != "$var" ]] || shared_by+=("$n")
      # Group instances by key value (the value never leaves this function).
      by_value[${VAL[$src]}]+="$src "
    done
    if ((enabled == 0)); then
      warning "no ${var}_N set: ${PROVIDER_NAME[$p]} is disabled, and commands that need it say so"
      continue
    fi
    any_enabled=1
    if ((${#shared_by[@]})); then
      warning "instances ${shared_by[*]} take the shared $var, which only natively started instances read; docker-compose.multi.yml passes ${var}_N to keyshard-N"
    fi
    for n in "${missing_on[@]}"; do
      problem "${var}_$n is missing: other instances have ${PROVIDER_NAME[$p]} keys, instance $n has none (each instance serves its users with its own keys)"
    done
    for names in "${by_value[@]}"; do
      # One line per key value used more than once: the names of the variables holding it.
      # shellcheck disable=SC2086 # split the list of names on purpose
      set -- $names
      (($# > 1)) || continue
      names=$(printf '%s\n' "$@" | sort -u)
      if [[ $names != *$'\n'* ]]; then
        problem "$names is shared by $# instances; give each its own ${var}_N (one key per instance is the point: N keys, N times the rate limits)"
      else
        problem "$(printf '%s' "$names" | paste -sd' ' | sed 's/ / and /g') hold the same key; each instance needs its own (a key shared by two instances halves its limits and brings 429s)"
      fi
    done
  done
  if ((!any_enabled)); then
    problem "no provider has keys: set OPENAI_API_KEY_N, MINIMAX_API_KEY_N or STABILITY_API_KEY_N for N = 1..$count"
  fi

  # ── Timing relations (the bot checks the first as well)
  local hb=${VAL[HEARTBEAT_MS]:-1000} dead=${VAL[DEAD_AFTER_MS]:-3000}
  local grace=${VAL[CLAIM_GRACE_MS]:-400} step=${VAL[CLAIM_STEP_MS]:-300}
  if is_uint "$hb" && is_uint "$dead" && ((${#hb} < 10 && ${#dead} < 10)); then
    if ((10#$dead <= 10#$hb)); then
      problem "DEAD_AFTER_MS ($dead) must be longer than HEARTBEAT_MS ($hb), or live instances look dead between beats"
    elif ((10#$dead < 2 * 10#$hb)); then
      warning "DEAD_AFTER_MS ($dead) is under twice HEARTBEAT_MS ($hb): one late heartbeat makes an instance look dead"
    fi
  fi
  if is_uint "$grace" && is_uint "$step" && ((${#grace} < 10 && ${#step} < 10)) &&
    ((10#$grace + (count - 1) * 10#$step >= 2500)); then
    warning "CLAIM_GRACE_MS + (INSTANCE_COUNT-1) × CLAIM_STEP_MS = $((10#$grace + (count - 1) * 10#$step)) ms leaves little of Discord's 3 s ack window; the bot squeezes the ladder, but smaller values are safer"
  fi

  # ── The file holds secrets
  if [[ $file != *.example ]] && [[ $(stat -c %a "$file" 2>/dev/null || echo 600) =~ [1-7]$ ]]; then
    warning "$file is readable by other users; it holds the token and keys: chmod 600 $file"
  fi

  # ── Report
  local item
  echo "validate: $file ($count instances)"
  for item in "${PROBLEMS[@]}"; do
    echo "  problem: $item"
  done
  for item in "${WARNINGS[@]}"; do
    echo "  warning: $item"
  done
  if ((${#PROBLEMS[@]})); then
    echo "validate: ${#PROBLEMS[@]} problem(s), ${#WARNINGS[@]} warning(s) in $file"
    return 1
  fi
  echo "validate: $file is ok (${#WARNINGS[@]} warning(s))"
}

# ─── Verb: demo ──────────────────────────────────────────────────────────────────────────────

# Installs an apt package for a missing command: quietly, `apt-get update` once, root or sudo -n.
APT_UPDATED=0
ensure_command() {
  local cmd=$1 pkg=$2 sudo=() log
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    die "$cmd is missing and this system has no apt-get; install the package that provides it ($pkg on Debian)."
  fi
  if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      die "$cmd is missing. Install it, then run this again:
    sudo apt-get install -y $pkg"
    fi
  fi
  log=$(mktemp)
  if ((!APT_UPDATED)); then
    say "apt-get update"
    "${sudo[@]}" apt-get update -qq >"$log" 2>&1 || {
      cat "$log" >&2
      die "apt-get update failed"
    }
    APT_UPDATED=1
  fi
  say "installing $pkg (for $cmd)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >"$log" 2>&1 || {
    cat "$log" >&2
    die "apt-get install $pkg failed"
  }
  rm -f "$log"
  command -v "$cmd" >/dev/null 2>&1 || die "installed $pkg but $cmd is still not on PATH"
}

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
  say "building keyshard and keyshard-sim (release)"
  cargo build --release --locked -p keyshard-bot -p keyshard-sim
  exec "$TARGET_DIR/release/keyshard-sim" demo "$@"
}

# ─── Verb: test (CI) ─────────────────────────────────────────────────────────────────────────

STEP_NAMES=()
STEP_RESULTS=()
STEP_SECS=()

# run_step NAME COMMAND...: runs, times and records a step; a failing step does not stop the
# others, so one CI run reports every problem.
run_step() {
  local name=$1 start rc=0
  shift
  printf '\n=== %s\n' "$name"
  start=$SECONDS
  "$@" || rc=$?
  STEP_NAMES+=("$name")
  STEP_SECS+=($((SECONDS - start)))
  if ((rc == 0)); then
    STEP_RESULTS+=(ok)
  else
    STEP_RESULTS+=(FAILED)
    printf '=== %s FAILED (exit %s)\n' "$name" "$rc"
  fi
}

# Every shell script of the repository: *.sh, and files whose first line is a sh/bash shebang.
shell_scripts() {
  local f
  while IFS= read -r -d '' f; do
    if [[ $f == *.sh ]] || head -n 1 "$f" 2>/dev/null | grep -Eq '^#!.*(/|env )(ba)?sh\b'; then
      printf '%s\n' "${f#./}"
    fi
  done < <(find . \( -path ./.git -o -path ./target -o -path './target-*' -o -name node_modules \) -prune \
    -o -type f \( -name '*.sh' -o -perm -u+x -o -path './.ci/*' \) -print0) | sort
}

step_shellcheck() {
  local scripts
  mapfile -t scripts < <(shell_scripts)
  echo "shellcheck: ${scripts[*]}"
  shellcheck --external-sources "${scripts[@]}"
}

step_compose_config() {
  local compose_cmd=(docker-compose)
  command -v docker-compose >/dev/null 2>&1 || compose_cmd=("$DOCKER" compose)
  # The example file stands in for .env.multi: every variable the compose file interpolates.
  "${compose_cmd[@]}" --project-name "$PROJECT" --file "$COMPOSE_FILE_PATH" \
    --env-file .env.multi.example --profile sim config --quiet || return 1
  local services expected
  services=$("${compose_cmd[@]}" --project-name "$PROJECT" --file "$COMPOSE_FILE_PATH" \
    --env-file .env.multi.example --profile sim config --services | sort | tr '\n' ' ') || return 1
  expected=$({ echo redis && echo sim && instance_services; } | sort | tr '\n' ' ')
  if [[ $services != "$expected" ]]; then
    echo "compose services are '$services', expected '$expected'"
    return 1
  fi
  echo "compose config ok: ${services% }"
}

# The Docker build's dependency layer stubs the sources (deploy/stub-workspace.sh); check, without
# a Docker engine, that the manifests alone plus the stubs still load as the workspace with
# Cargo.lock unchanged. (Not compiled here: cargo names artifacts by paths relative to the
# workspace root, so stub builds in the shared target directory would pass for the real crates.)
# Offline, for this platform only: Windows-only crates (anstyle-wincon, …) are in no fresh
# cache; the lock file is still checked whole. This platform's crates are fetched first: the
# build steps before fetch only what they compile, and Cargo.lock also lists crates nothing
# here compiles (sqlx names its SQLite and MySQL drivers through weak features).
step_docker_stubs() {
  local tmp host rc=0
  tmp=$(mktemp -d)
  host=$(rustc -vV | sed -n 's/^host: //p')
  find . \( -path ./.git -o -path ./target -o -path './target-*' \) -prune -o \
    \( -name Cargo.toml -o -name Cargo.lock \) -print | tar -cf - -T - | tar -xf - -C "$tmp"
  deploy/stub-workspace.sh "$tmp" &&
    cargo fetch --locked --quiet --target "$host" &&
    (cd "$tmp" && cargo metadata --locked --offline --filter-platform "$host" \
      --format-version 1 >/dev/null) || rc=$?
  rm -rf "$tmp"
  ((rc == 0)) && echo "the Dockerfile's stub workspace loads with Cargo.lock unchanged"
  return "$rc"
}

TEST_COUNTS=(0 0 0) # passed failed ignored, over cargo test and the shell tests
step_cargo_test() {
  local log rc=0
  log=$(mktemp)
  cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || rc=$?
  # Sum cargo's per-binary summaries: "test result: ok. 12 passed; 0 failed; 1 ignored; ..."
  local sums
  sums=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
              END { printf "%d %d %d", p, f, g }' "$log")
  rm -f "$log"
  read -r -a sums <<<"$sums"
  TEST_COUNTS=($((TEST_COUNTS[0] + sums[0])) $((TEST_COUNTS[1] + sums[1])) $((TEST_COUNTS[2] + sums[2])))
  return "$rc"
}

step_shell_tests() {
  local t rc=0 out
  for t in tests-deploy/*_test.sh; do
    [[ -e $t ]] || continue
    out=$(bash "$t" 2>&1) || rc=1
    printf '%s\n' "$out"
    # Each test file ends with "<file>: N passed, M failed".
    if [[ $(tail -n 1 <<<"$out") =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
      TEST_COUNTS[0]=$((TEST_COUNTS[0] + BASH_REMATCH[1]))
      TEST_COUNTS[1]=$((TEST_COUNTS[1] + BASH_REMATCH[2]))
    fi
  done
  return "$rc"
}

cmd_test() {
  local started=$SECONDS
  require_cargo
  ensure_command redis-server redis-server
  ensure_command shellcheck shellcheck
  ensure_command python3 python3 # tests-deploy/dashboard_test.sh reads the dashboard JSON
  if ! command -v docker-compose >/dev/null 2>&1 && ! "$DOCKER" compose version >/dev/null 2>&1; then
    ensure_command docker-compose docker-compose
  fi
  if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  fi

  run_step "cargo fmt" cargo fmt --all --check
  run_step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
  run_step "cargo test" step_cargo_test
  run_step "shellcheck" step_shellcheck
  run_step "compose config" step_compose_config
  run_step "docker stub build" step_docker_stubs
  run_step "deploy shell tests" step_shell_tests

  local i failed=()
  printf '\n=== summary\n'
  for i in "${!STEP_NAMES[@]}"; do
    printf '%-7s %-20s %5ss\n' "${STEP_RESULTS[i]}" "${STEP_NAMES[i]}" "${STEP_SECS[i]}"
    [[ ${STEP_RESULTS[i]} == ok ]] || failed+=("${STEP_NAMES[i]}")
  done
  local verdict=ok
  ((${#failed[@]} == 0)) || verdict=FAILED
  # The closing line has cargo's summary shape, so tools that read test logs recognise it. It
  # counts the Rust tests and the shell test cases; a failed step without failed tests (fmt,
  # clippy, shellcheck, compose config) counts as one failure.
  local failures=$((TEST_COUNTS[1]))
  ((${#failed[@]} > 0 && failures == 0)) && failures=${#failed[@]}
  if ((${#failed[@]})); then
    echo "deploy-multi.sh test: FAILED steps: ${failed[*]}"
  else
    echo "deploy-multi.sh test: all ${#STEP_NAMES[@]} steps passed"
  fi
  printf 'test result: %s. %d passed; %d failed; %d ignored; 0 measured; 0 filtered out; finished in %ds\n' \
    "$verdict" "${TEST_COUNTS[0]}" "$failures" "${TEST_COUNTS[2]}" $((SECONDS - started))
  [[ $verdict == ok ]]
}

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
    test) cmd_test ;;
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
