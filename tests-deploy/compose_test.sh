#!/usr/bin/env bash
# The keyshard-N services of docker-compose.multi.yml, from the image, run the way an operator
# runs them (`./deploy-multi.sh start`, `status`, `rolling-restart`, `stop`) against
# `keyshard-sim serve` on this host: fake Discord and fake providers, a fake token and fake keys.
# Checked: every instance becomes healthy (gateway READY, commands registered, Redis), a bot
# process killed inside its container is restarted by the engine, `docker stop` drains and exits
# 0 within the grace period, a rolling restart completes, and stop leaves nothing running.
#
# Networking: `keyshard-sim serve` listens on 127.0.0.1 and advertises that address in its
# gateway URL, so the instances run with host networking. Compose cannot take `ports:` away in an
# override (and host networking refuses published ports), so the test writes a variant of the
# compose file from `docker-compose config`: the keyshard-N services on the host network with
# their own HTTP_BIND, Redis and Postgres published on loopback ports for them. Everything else
# (image, healthcheck, read-only root, tmpfs, init, restart policy, stop grace, capabilities,
# env wiring) is the file's own.
#
# Skipped without an engine or the image. Run by deploy/ci.sh (after the image step), or alone.
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
keyshard_bin

DOCKER=${DOCKER:-docker}
IMAGE=${KEYSHARD_IMAGE:-keyshard:local}
if [[ -n ${KEYSHARD_TEST_NO_ENGINE:-} ]] || ! "$DOCKER" info >/dev/null 2>&1; then
  echo "compose_test.sh: 0 passed, 0 failed (skipped: no Docker engine)"
  exit 0
fi
if ! "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "compose_test.sh: 0 passed, 0 failed (skipped: no image $IMAGE; deploy/ci.sh builds it)"
  exit 0
fi
command -v redis-server >/dev/null || { echo "compose_test.sh: needs redis-server (keyshard-sim serve)" && exit 1; }
command -v python3 >/dev/null || { echo "compose_test.sh: needs python3" && exit 1; }

export COMPOSE_PROJECT_NAME=ks-compose-$$
# Ports for this run: instance n serves HTTP on PORT_BASE+n; Redis and Postgres on the next two.
# Free ones, so a CI box running other things (or another run of this test) is no obstacle.
free_port_block() {
  python3 - <<'EOF'
import socket
for base in range(20000, 60000, 16):
    socks = []
    try:
        for p in range(base, base + 8):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            socks.append(s)
        print(base)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
EOF
}
PORT_BASE=$(free_port_block)
REDIS_PORT=$((PORT_BASE + 6))
PG_PORT=$((PORT_BASE + 7))

SIM_PID=
cleanup_run() {
  if [[ -f $TMP/compose.yml ]]; then
    docker_compose down --volumes --timeout 50 >/dev/null 2>&1 || true
  fi
  [[ -z $SIM_PID ]] || kill -INT "$SIM_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup_run EXIT

docker_compose() {
  local cmd=(docker-compose)
  command -v docker-compose >/dev/null 2>&1 || cmd=("$DOCKER" compose)
  "${cmd[@]}" --project-name "$COMPOSE_PROJECT_NAME" --file "$TMP/compose.yml" --env-file "$TMP/env" "$@"
}

# ── keyshard-sim serve: the binary from the image, so the fakes match the bot under test.
SIM=${KEYSHARD_SIM_BIN:-}
if [[ -z $SIM ]]; then
  cid=$("$DOCKER" create "$IMAGE")
  "$DOCKER" cp "$cid:/usr/local/bin/keyshard-sim" "$TMP/keyshard-sim" >/dev/null
  "$DOCKER" rm "$cid" >/dev/null
  SIM=$TMP/keyshard-sim
fi
# Its own session, so that its Ctrl-C (SIGINT, which ends serve) reaches it and nothing else.
setsid "$SIM" serve --instances 4 >"$TMP/serve.out" 2>"$TMP/serve.err" &
SIM_PID=$!
# Polled: serve prints the instances' env and then waits; 30 s covers a loaded machine.
deadline=$((SECONDS + 30))
until grep -q '^# Ctrl-C' "$TMP/serve.out" 2>/dev/null; do
  if ((SECONDS >= deadline)) || ! kill -0 "$SIM_PID" 2>/dev/null; then
    cat "$TMP/serve.out" "$TMP/serve.err"
    echo "compose_test.sh: keyshard-sim serve did not start"
    exit 1
  fi
  sleep 0.2
done

# The env file an operator would write for it: X shared where every instance has the same value,
# X_n for the rest (the keys, DISCORD_API_BASE). REDIS_URL and HTTP_BIND come from the compose
# variant below, INSTANCE_ID from compose.
python3 - "$TMP/serve.out" "$ROOT/.env.multi.example" >"$TMP/env" <<'EOF'
import sys
lines = [l.split() for l in open(sys.argv[1]) if l.startswith("DISCORD_TOKEN=")]
per = [dict(kv.split("=", 1) for kv in l) for l in lines]
skip = {"INSTANCE_ID", "REDIS_URL", "HTTP_BIND"}
print("# written by tests-deploy/compose_test.sh from keyshard-sim serve")
for name in per[0]:
    if name in skip:
        continue
    values = [p[name] for p in per]
    if len(set(values)) == 1 and not name.endswith("_API_KEY"):
        print(f"{name}={values[0]}")
    else:
        for n, v in enumerate(values, 1):
            print(f"{name}_{n}={v}")
EOF
chmod 600 "$TMP/env"

# ── The compose variant: host networking for the instances (see the top of this file).
(cd "$ROOT" && docker-compose --project-name "$COMPOSE_PROJECT_NAME" --file docker-compose.multi.yml \
  --env-file "$TMP/env" config) >"$TMP/resolved.yml" 2>"$TMP/config.err" || {
  cat "$TMP/config.err"
  exit 1
}
python3 - "$TMP/resolved.yml" "$PORT_BASE" "$REDIS_PORT" "$PG_PORT" >"$TMP/compose.yml" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
base, redis_port, pg_port = (int(a) for a in sys.argv[2:5])
services = cfg["services"]
services["redis"]["ports"] = [f"127.0.0.1:{redis_port}:6379"]
services["postgres"]["ports"] = [f"127.0.0.1:{pg_port}:5432"]
for name, svc in services.items():
    if not name.startswith("keyshard-"):
        continue
    n = int(name.split("-")[1])
    svc.pop("ports", None)
    svc.pop("networks", None)
    svc["network_mode"] = "host"
    env = svc["environment"]
    env["HTTP_BIND"] = f"127.0.0.1:{base + n}"
    env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
    env["DATABASE_URL"] = env["DATABASE_URL"].replace("@postgres:5432", f"@127.0.0.1:{pg_port}")
yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
EOF

run() {
  env KEYSHARD_ENV_FILE="$TMP/env" KEYSHARD_COMPOSE_FILE="$TMP/compose.yml" "$SCRIPT" "$@"
}
container() { docker_compose ps -q "$1"; }
# Polled: the engine reports health and restarts by status only.
wait_for() {
  local what=$1 want=$2 secs=$3 deadline got=
  shift 3
  deadline=$((SECONDS + secs))
  while ((SECONDS < deadline)); do
    got=$("$@" 2>/dev/null || true)
    [[ $got == "$want" ]] && echo "$what: $got" && return 0
    sleep 1
  done
  echo "$what: '$got' after ${secs}s, expected '$want'"
  return 1
}
health() { "$DOCKER" inspect -f '{{.State.Health.Status}}' "$(container "$1")"; }
all_healthy() {
  local n states=()
  for n in 1 2 3 4; do states+=("$(health "keyshard-$n")"); done
  echo "${states[*]}"
}
restarts() { "$DOCKER" inspect -f '{{.RestartCount}}' "$(container "$1")"; }

# ── start, as an operator does
expect "start: validate, build (cached), Redis and Postgres, then the instances one by one" 0 \
  "is ok" "starting redis and postgres" "starting keyshard-4" "started" "!have been ignored" -- run start
# Healthy = /readyz 200: gateway READY against the fake, commands registered, Redis answering.
# The image's start period is 60 s; 180 s is three of them on a loaded CI machine.
expect "every instance becomes healthy" 0 "healthy healthy healthy healthy" \
  -- wait_for "health" "healthy healthy healthy healthy" 180 all_healthy
expect "status: four containers, and four instances alive in the cluster view" 0 \
  "keyshard-4_1  state=running  health=healthy  restarts=0" "4 instances · 4 alive" -- run status
# Plain text: escape codes in `docker logs` are noise for every log shipper.
plain_logs() {
  local esc
  esc=$(printf '\033')
  echo "lines with escape codes: $("$DOCKER" logs "$(container keyshard-1)" 2>&1 | grep -c "$esc" || true)"
}
expect "the instances log plain text" 0 "lines with escape codes: 0" -- plain_logs

# ── a crashed bot process: the engine restarts the container (restart: on-failure)
kill_bot() {
  # shellcheck disable=SC2016 # expanded by the container's bash
  "$DOCKER" exec "$(container keyshard-2)" bash -c \
    'for p in /proc/[0-9]*; do [[ $(cat $p/comm 2>/dev/null) == keyshard ]] && kill -9 ${p#/proc/}; done; true'
}
kill_bot
expect "a bot killed inside keyshard-2 is restarted by the engine" 0 "restarts of keyshard-2: 1" \
  -- wait_for "restarts of keyshard-2" 1 60 restarts keyshard-2
expect "  ... and is healthy again" 0 "healthy" -- wait_for "keyshard-2" healthy 180 health keyshard-2

# ── docker stop: SIGTERM, the drain, exit 0 inside the grace period
stop_one() {
  local c started=$SECONDS
  c=$(container keyshard-3)
  "$DOCKER" stop -t 45 "$c" >/dev/null
  echo "exit $("$DOCKER" inspect -f '{{.State.ExitCode}}' "$c") after $((SECONDS - started))s"
  "$DOCKER" logs --tail 20 "$c" 2>&1
}
expect "docker stop drains keyshard-3 and it exits 0" 0 "exit 0 after" "draining: no new interactions" \
  "left the cluster" "INFO stopped" -- stop_one
expect "  ... a clean exit stays down (on-failure)" 0 "exited" \
  -- "$DOCKER" inspect -f '{{.State.Status}}' "$(container keyshard-3)"
docker_compose start keyshard-3 >/dev/null
expect "  ... and starts again" 0 "healthy" -- wait_for "keyshard-3" healthy 180 health keyshard-3

# ── rolling restart: one at a time, each ready before the next
expect "rolling-restart recreates the four, one by one" 0 "keyshard-4: ready" "rolling restart done" \
  -- run rolling-restart

# ── stop: every instance drains, nothing left
expect "stop drains and removes everything" 0 "stopping" -- run stop
left_over() {
  echo "containers left: $("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | wc -l)"
}
expect "  ... no container left" 0 "containers left: 0" -- left_over

finish
