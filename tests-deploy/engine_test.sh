#!/usr/bin/env bash
# deploy/engine.sh against fakes of docker, dockerd, curl, apt-get and debootstrap (no engine, no
# network): the base image names read from a Dockerfile and a compose file, the registry probe,
# stand-ins built only where missing, the engine start with its bounded wait, and never a
# `docker pull`. Run by deploy/ci.sh, or alone.
# sed and bash -c scripts below use $ for themselves, not for expansion here.
# shellcheck disable=SC2016
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ((EUID != 0)); then
  # install, start and debootstrap run as root; as another user the script says what to run.
  echo "engine_test.sh: 0 passed, 0 failed (skipped: needs root)"
  exit 0
fi

ENGINE=$ROOT/deploy/engine.sh

# ── Fixtures: a Dockerfile with ARGs and a named stage, a compose file with image defaults.
cat >"$TMP/Dockerfile" <<'EOF'
ARG RUST_VERSION=1.77
ARG DEBIAN_RELEASE=bookworm
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
RUN true
FROM builder AS again
FROM --platform=linux/amd64 debian:$DEBIAN_RELEASE-slim AS runtime
EOF
cat >"$TMP/compose.yml" <<'EOF'
services:
  redis:
    image: ${REDIS_IMAGE:-redis:7-alpine}
  postgres:
    image: "${POSTGRES_IMAGE:-postgres:15-bookworm}"
EOF

# ── A PATH with the system's tools but none of the ones faked here.
BIN=$TMP/bin
mkdir -p "$BIN" "$TMP/state"
for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
  [[ -d $dir ]] || continue
  for tool in "$dir"/*; do
    name=${tool##*/}
    case $name in
      docker | dockerd | docker-compose | curl | apt-get | debootstrap | sudo | systemctl | rustc) continue ;;
    esac
    [[ -e $BIN/$name ]] || ln -s "$tool" "$BIN/$name"
  done
done
export CALLS=$TMP/calls.log STATE=$TMP/state FAKE_BIN=$BIN

# docker: logs every call; `info` answers once $STATE/engine-up exists; `image inspect` finds
# the images listed in $STATE/images; build/import add their tag there.
cat >"$BIN/docker" <<'FAKE'
#!/bin/bash
echo "docker $*" >>"$CALLS"
case $1 in
  info) [[ -e $STATE/engine-up ]] ;;
  version) echo 99.0 ;;
  --version) echo "Docker version 99.0 (fake)" ;;
  compose) [[ $2 == version && ! -e $STATE/no-compose ]] ;;
  image)
    [[ $2 == inspect ]] || exit 0
    grep -qxF -- "${!#}" "$STATE/images" 2>/dev/null
    ;;
  build)
    echo "context $(cd "${!#}" && find . -maxdepth 5 | sort | paste -sd,)" >>"$CALLS"
    while (($#)); do [[ $1 == -t ]] && echo "$2" >>"$STATE/images"; shift; done
    ;;
  import)
    cat >/dev/null
    echo "${!#}" >>"$STATE/images"
    ;;
  *) exit 0 ;;
esac
FAKE
cat >"$BIN/curl" <<'FAKE'
#!/bin/bash
echo "curl $*" >>"$CALLS"
printf '%s' "$(cat "$STATE/registry-code" 2>/dev/null || echo 000)"
FAKE
cat >"$BIN/apt-get" <<'FAKE'
#!/bin/bash
echo "apt-get $*" >>"$CALLS"
for pkg in "$@"; do
  case $pkg in
    docker.io) printf '#!/bin/sh\nexit 0\n' >"$FAKE_BIN/dockerd" && chmod +x "$FAKE_BIN/dockerd" ;;
    debootstrap) printf '#!/bin/sh\necho "debootstrap $*" >>"$CALLS"; mkdir -p "$3/etc"\n' >"$FAKE_BIN/debootstrap" && chmod +x "$FAKE_BIN/debootstrap" ;;
  esac
done
FAKE
cat >"$BIN/rustc" <<'FAKE'
#!/bin/bash
case $1 in
  --print) echo "$FAKE_SYSROOT" ;;
  *) echo "rustc 1.77.2 (fake)" ;;
esac
FAKE
mkdir -p "$TMP/sysroot/bin" "$TMP/sysroot/lib/rustlib/src"
cp "$BIN/rustc" "$TMP/sysroot/bin/rustc"
export FAKE_SYSROOT=$TMP/sysroot
chmod +x "$BIN"/docker "$BIN"/curl "$BIN"/apt-get "$BIN"/rustc "$TMP/sysroot/bin/rustc"

export KEYSHARD_DOCKERFILE=$TMP/Dockerfile KEYSHARD_COMPOSE_FILE=$TMP/compose.yml
export DOCKERD_LOG=$TMP/dockerd.log DEBIAN_MIRROR=http://mirror.invalid/debian TMPDIR=$TMP
unset KEYSHARD_OFFLINE REDIS_IMAGE POSTGRES_IMAGE
reset() {
  rm -f "$CALLS" "$STATE"/*
  : >"$CALLS"
}
engine() { env PATH="$BIN" "$ENGINE" "$@"; }
calls() { paste -sd'|' "$CALLS"; }

# ── names
reset
expect "names: the FROM lines with their ARGs, stages left out, then compose's defaults" 0 \
  "rust rust:1.77-slim-bookworm
debian debian:bookworm-slim
redis redis:7-alpine
postgres postgres:15-bookworm" -- engine names
expect "names: REDIS_IMAGE set is the name compose uses" 0 "redis redis:7.2-bookworm" \
  -- env REDIS_IMAGE=redis:7.2-bookworm PATH="$BIN" "$ENGINE" names

# ── registry: a probe of the API root, never a pull
reset
expect "registry: nothing answers" 1 "no image registry is reachable" "answered nothing" -- engine registry
echo 401 >"$STATE/registry-code"
expect "registry: 401 (auth needed) means it is there" 0 "an image registry is reachable" -- engine registry
echo 403 >"$STATE/registry-code"
expect "registry: a proxy's 403 means it is not" 1 "answered 403" -- engine registry
expect "  ... each a 5 s probe of the API root" 0 "curl -sS -o /dev/null -m 5 -w %{http_code} https://registry-1.docker.io/v2/" -- cat "$CALLS"
reset
expect "registry: KEYSHARD_OFFLINE=1 decides without probing" 1 "KEYSHARD_OFFLINE=1" \
  -- env KEYSHARD_OFFLINE=1 PATH="$BIN" "$ENGINE" registry
expect "  ... no probe" 0 "!curl" -- cat "$CALLS"

# ── install and start
reset
rm -f "$BIN/dockerd"
expect "install: docker.io when dockerd is missing" 0 "installing docker.io" -- engine install
expect "  ... apt-get update once, then one quiet install" 0 \
  "apt-get update -qq|apt-get install -y -qq --no-install-recommends docker.io|docker --version" -- calls
reset
touch "$STATE/no-compose"
expect "install: docker-compose when there is no compose plugin; dockerd is there now" 0 \
  "installing docker-compose" "!docker.io" -- engine install
reset
expect "start: an engine that answers is left alone" 0 "the engine answers" \
  -- bash -c 'touch "$STATE/engine-up"; PATH="$0" "$1" start && ! grep -q dockerd "$CALLS"' "$BIN" "$ENGINE"
reset
# dockerd: brings the fake engine up, or exits at once ($STATE/dockerd-fails), or never answers.
cat >"$BIN/dockerd" <<'FAKE'
#!/bin/bash
echo "dockerd" >>"$CALLS"
[[ -e $STATE/dockerd-fails ]] && { echo "failed to start daemon: fake" >&2; exit 1; }
[[ -e $STATE/dockerd-hangs ]] && exec sleep 3
touch "$STATE/engine-up"
FAKE
chmod +x "$BIN/dockerd"
expect "start: dockerd in the background, then docker info answers" 0 "starting dockerd" "the engine answers" -- engine start
reset
touch "$STATE/dockerd-fails"
expect "start: dockerd that exits says so with its log" 1 "failed to start daemon: fake" "dockerd exited during start" -- engine start
reset
touch "$STATE/dockerd-hangs"
expect "start: an engine that never answers is a clear error, bounded" 1 "did not answer within 1s" \
  -- env ENGINE_START_TIMEOUT_SECS=1 PATH="$BIN" "$ENGINE" start

# ── standins: only what is missing, never a pull
reset
touch "$STATE/engine-up"
printf '%s\n' rust:1.77-slim-bookworm debian:bookworm-slim redis:7-alpine postgres:15-bookworm >"$STATE/images"
expect "standins: every tag present, nothing built" 0 "stand-ins: 0 built, 4 present" -- engine standins
expect "  ... no build, import or pull" 0 "!build" "!import" "!pull" -- cat "$CALLS"
reset
touch "$STATE/engine-up"
printf '%s\n' debian:bookworm-slim rust:1.77-slim-bookworm >"$STATE/images"
expect "standins: the missing Redis and Postgres, from the Debian stand-in" 0 "stand-ins: 2 built, 2 present" -- engine standins
expect "  ... tagged with compose's names, labelled, no pull" 0 \
  "build --label org.keyshard.standin=1 -t redis:7-alpine" "build --label org.keyshard.standin=1 -t postgres:15-bookworm" "!pull" \
  -- cat "$CALLS"
reset
touch "$STATE/engine-up"
expect "standins from nothing: debootstrap from the mirror, import, then the rest FROM it" 0 "stand-ins: 4 built, 0 present" -- engine standins
expect "  ... in that order" 0 \
  "debootstrap --variant=minbase bookworm $TMP/" "import --change LABEL org.keyshard.standin=1" \
  "!pull" -- cat "$CALLS"
expect "  ... the Debian one first" 0 "debian:bookworm-slim" -- bash -c 'grep -m1 -oE "(import|build) .*" "$CALLS" | grep -o "debian:bookworm-slim"'
expect "  ... the Rust one holds the host toolchain without its sources, and the CA bundle" 0 \
  "./rust/bin/rustc" "./ca-certificates.crt" "!./rust/lib/rustlib/src" -- grep "rust/bin" "$CALLS"
build_dirs_left() { echo "build directories left: $(find "$TMP" -maxdepth 1 -name 'keyshard-standin.*' | wc -l)"; }
expect "  ... and leaves no build directory behind" 0 "build directories left: 0" -- build_dirs_left
reset
touch "$STATE/engine-up"
printf '%s\n' debian:bookworm-slim >"$STATE/images"
expect "standins: a host toolchain of another version is refused, not mislabelled" 1 \
  "this host's toolchain is 1.77.2, not 1.78" \
  -- bash -c 'sed -i "s/1.77/1.78/" "$KEYSHARD_DOCKERFILE" && PATH="$0" "$1" standins; rc=$?; sed -i "s/1.78/1.77/" "$KEYSHARD_DOCKERFILE"; exit $rc' "$BIN" "$ENGINE"

# ── ensure: stand-ins only where no registry answers
reset
touch "$STATE/engine-up"
echo 401 >"$STATE/registry-code"
expect "ensure with a registry: no stand-ins" 0 "base images come from it, no stand-ins" "!stand-ins:" -- engine ensure
reset
touch "$STATE/engine-up"
expect "ensure without one: stand-ins, and no pull" 0 "stand-in base images from Debian packages" "stand-ins: 4 built" -- engine ensure
expect "  ... no pull anywhere" 0 "!pull" -- cat "$CALLS"

finish
