#!/usr/bin/env bash
# engine.sh — a Docker engine for keyshard's image and compose file, also on a machine that can
# reach no image registry (an air-gapped host, or CI behind a proxy that only lets Debian's and
# crates.io's mirrors through).
#
#   deploy/engine.sh ensure      install + start, then stand-ins when no registry answers (CI)
#   deploy/engine.sh install     apt-get install docker.io (and docker-compose) when missing
#   deploy/engine.sh start       start dockerd when no engine answers; wait for `docker info`
#   deploy/engine.sh registry    exit 0 when an image registry answers, 1 when none does
#   deploy/engine.sh standins    build the missing stand-in base images (never pulls)
#   deploy/engine.sh names       the base images the Dockerfile and the compose file use
#
# Stand-ins are local images built from Debian packages and tagged with the exact names the
# Dockerfile's FROM lines and the compose file's image defaults use, so both run unchanged:
#   debian:<release>-slim         debootstrap --variant=minbase, then docker import
#   rust:<ver>-slim-<release>     FROM the Debian stand-in, with this host's Rust toolchain
#                                 (same version) and this host's CA bundle (for cargo behind a
#                                 TLS-intercepting proxy)
#   ${REDIS_IMAGE:-redis:…}       Debian's redis-server, protected mode off like the official one
#   ${POSTGRES_IMAGE:-postgres:…} Debian's PostgreSQL, with an entry point that reads
#                                 POSTGRES_USER/PASSWORD/DB and keeps its data in
#                                 /var/lib/postgresql/data like the official one
# A tag that exists already is kept (the second run takes a second); `standins --rebuild`
# replaces them. Each carries the label org.keyshard.standin=1.
#
# Environment knobs (all optional):
#   KEYSHARD_OFFLINE=1|0        skip the registry probe: 1 = no registry (build stand-ins),
#                               0 = a registry is there (never build stand-ins)
#   KEYSHARD_REGISTRY_URL       registry probed (default https://registry-1.docker.io/v2/)
#   DEBIAN_MIRROR               mirror for debootstrap (default: the first Debian URI in
#                               /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list)
#   RUST_TOOLCHAIN_DIR          toolchain copied into the Rust stand-in (default: rustc's sysroot)
#   ENGINE_START_TIMEOUT_SECS   how long `start` waits for the engine (default 90)
#   DOCKERD_LOG                 where a dockerd started here logs (default /var/log/keyshard-dockerd.log)
#   DOCKER                      docker CLI (default docker)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER=${DOCKER:-docker}
DOCKERFILE=${KEYSHARD_DOCKERFILE:-$ROOT/Dockerfile}
COMPOSE_FILE_PATH=${KEYSHARD_COMPOSE_FILE:-$ROOT/docker-compose.multi.yml}
REGISTRY_URL=${KEYSHARD_REGISTRY_URL:-https://registry-1.docker.io/v2/}
# Docker's own start takes ~5 s here; 90 s covers a first start that sets up iptables and
# storage on a slow, loaded machine without hanging CI on an engine that will never come up.
ENGINE_START_TIMEOUT_SECS=${ENGINE_START_TIMEOUT_SECS:-90}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/keyshard-dockerd.log}
STANDIN_LABEL=org.keyshard.standin
# The classic builder: Debian's engine has no BuildKit, and a newer CLI without buildx would
# otherwise refuse to build.
export DOCKER_BUILDKIT=0

say() { printf 'engine: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

# ─── install ─────────────────────────────────────────────────────────────────────────────────

# shellcheck source=deploy/apt.sh
source "$ROOT/deploy/apt.sh"

has_compose() {
  "$DOCKER" compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1
}

cmd_install() {
  local pkgs=()
  # dockerd, not the docker CLI: a CLI alone (some images ship one) cannot run anything.
  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  has_compose || pkgs+=(docker-compose)
  if ((${#pkgs[@]})); then
    apt_install "${pkgs[@]}"
  fi
  command -v "$DOCKER" >/dev/null 2>&1 || die "installed ${pkgs[*]} but '$DOCKER' is still not on PATH"
  say "docker: $("$DOCKER" --version 2>/dev/null)"
}

# ─── start ───────────────────────────────────────────────────────────────────────────────────

engine_answers() { "$DOCKER" info >/dev/null 2>&1; }

cmd_start() {
  if engine_answers; then
    say "the engine answers ($("$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    return 0
  fi
  command -v dockerd >/dev/null 2>&1 || die "no engine answers and dockerd is not installed: deploy/engine.sh install"
  apt_can_install || die "no engine answers. Start it (sudo systemctl start docker), or run this as root."
  local pid=''
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    say "starting docker.service"
    "${APT_SUDO[@]}" systemctl start docker || die "systemctl start docker failed (journalctl -u docker)"
  else
    # No init system to ask (a container, a CI box): run dockerd ourselves, detached from this
    # shell so it outlives the script, and keep its log for the error message below.
    say "starting dockerd (log: $DOCKERD_LOG)"
    "${APT_SUDO[@]}" mkdir -p "$(dirname "$DOCKERD_LOG")"
    # shellcheck disable=SC2024 # the log is ours to write, not root's
    "${APT_SUDO[@]}" setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
  fi
  local deadline=$((SECONDS + ENGINE_START_TIMEOUT_SECS))
  # Polled: dockerd announces readiness only to systemd, and `docker info` is the check every
  # other verb makes anyway.
  until engine_answers; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$DOCKERD_LOG" >&2 || true
      die "dockerd exited during start (the lines above are the end of $DOCKERD_LOG)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
      die "the engine did not answer within ${ENGINE_START_TIMEOUT_SECS}s (docker info); see $DOCKERD_LOG"
    fi
    sleep 0.5
  done
  say "the engine answers ($("$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
}

# ─── registry ────────────────────────────────────────────────────────────────────────────────

# 0 when an image registry can be used. Never a pull: a pull on a machine without a registry
# hangs on DNS or the proxy for minutes. The registry API root answers 200 or 401 (auth needed)
# when it is there; a proxy's refusal (403), no DNS or no route means it is not.
registry_reachable() {
  case ${KEYSHARD_OFFLINE:-} in
    1 | yes | true) REGISTRY_WHY="KEYSHARD_OFFLINE=${KEYSHARD_OFFLINE}" && return 1 ;;
    0 | no | false) REGISTRY_WHY="KEYSHARD_OFFLINE=${KEYSHARD_OFFLINE}" && return 0 ;;
  esac
  command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
  local code
  # 5 s: a registry answers its API root in well under a second; a black-holed route would
  # otherwise hold CI for curl's default of minutes.
  code=$(curl -sS -o /dev/null -m 5 -w '%{http_code}' "$REGISTRY_URL" 2>/dev/null) || code=000
  REGISTRY_WHY="$REGISTRY_URL answered ${code/#000/nothing}"
  [[ $code == 200 || $code == 401 ]]
}
REGISTRY_WHY=

cmd_registry() {
  if registry_reachable; then
    say "an image registry is reachable ($REGISTRY_WHY)"
  else
    say "no image registry is reachable ($REGISTRY_WHY)"
    return 1
  fi
}

# ─── names ───────────────────────────────────────────────────────────────────────────────────

# The external images of the Dockerfile's FROM lines, with the ARG defaults before the first
# FROM substituted, one per line; stages named by an earlier `AS` are left out.
dockerfile_bases() {
  awk '
    BEGIN { IGNORECASE = 1 }
    /^[[:space:]]*ARG[[:space:]]+[A-Za-z_][A-Za-z0-9_]*=/ && !seen_from {
      sub(/^[[:space:]]*ARG[[:space:]]+/, ""); eq = index($0, "=")
      name = substr($0, 1, eq - 1); value = substr($0, eq + 1); gsub(/[[:space:]"]/, "", value)
      arg[name] = value; next
    }
    /^[[:space:]]*FROM[[:space:]]/ {
      seen_from = 1; img = ""; stage = ""
      for (i = 2; i <= NF; i++) {
        if ($i ~ /^--/) continue
        if (img == "") { img = $i; continue }
        if (tolower($i) == "as" && i < NF) stage = $(i + 1)
        break
      }
      for (name in arg) { gsub("\\$\\{" name "\\}", arg[name], img); gsub("\\$" name, arg[name], img) }
      if (!(img in stages)) print img
      if (stage != "") stages[stage] = 1
    }
  ' "$DOCKERFILE" | awk '!seen[$0]++'
}

# The default of ${VAR:-default} in the compose file's `image:` lines, or the variable's value
# when it is set (compose would use that).
compose_image() {
  local var=$1 default
  default=$(sed -n "s/^ *image: *\"\{0,1\}\${$var:-\([^}]*\)}.*/\1/p" "$COMPOSE_FILE_PATH" | head -n 1)
  printf '%s\n' "${!var:-$default}"
}

# Every base image with its recipe: "KIND IMAGE", KIND one of debian, rust, redis, postgres.
base_images() {
  local img
  while IFS= read -r img; do
    case ${img%%:*} in
      debian | */debian) echo "debian $img" ;;
      rust | */rust) echo "rust $img" ;;
      *) echo "unknown $img" ;;
    esac
  done < <(dockerfile_bases)
  img=$(compose_image REDIS_IMAGE)
  [[ -z $img ]] || echo "redis $img"
  img=$(compose_image POSTGRES_IMAGE)
  [[ -z $img ]] || echo "postgres $img"
}

cmd_names() { base_images; }

# ─── standins ────────────────────────────────────────────────────────────────────────────────

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# The Debian release in a tag: debian:bookworm-slim, rust:1.95-slim-bookworm → bookworm. A tag
# that names none (redis:7-alpine) gets the release of the Dockerfile's Debian base, so every
# stand-in shares one Debian layer.
release_of() {
  local tag=${1##*:} r line
  for r in buster bullseye bookworm trixie forky; do
    [[ $tag == *"$r"* ]] && echo "$r" && return 0
  done
  line=$(dockerfile_bases | grep -E '^([^/]*/)?debian:' | head -n 1)
  [[ -n $line ]] || die "cannot tell which Debian release to build $1 on (no debian base in $DOCKERFILE)"
  release_of "$line"
}

debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
    /^URIs:/ { for (i = 2; i <= NF; i++) uris = uris " " $i }
    /^Suites:/ { if ($0 ~ /[[:space:]](bookworm|bullseye|trixie|buster|forky)([[:space:]]|$)/) { split(uris, u, " "); print u[1]; exit } }
    /^[[:space:]]*$/ { uris = "" }')
  [[ -n $uri ]] || uri=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\(https\{0,1\}:[^ ]*debian\/\{0,1\}\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
  echo "${uri:-http://deb.debian.org/debian}"
}

# Fresh directories for build contexts, all removed on exit. new_workdir sets WORKDIR rather
# than printing it: a $(…) would run it in a subshell, and the list would never see it.
WORKDIRS=()
WORKDIR=
cleanup() {
  local d
  for d in "${WORKDIRS[@]}"; do
    "${APT_SUDO[@]}" rm -rf "$d"
  done
}
trap cleanup EXIT
new_workdir() {
  WORKDIR=$(mktemp -d "${TMPDIR:-/var/tmp}/keyshard-standin.XXXXXX")
  WORKDIRS+=("$WORKDIR")
}

build_debian() {
  local tag=$1 release rootfs mirror
  release=$(release_of "$tag")
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  apt_can_install || die "debootstrap needs root"
  mirror=$(debian_mirror)
  new_workdir
  rootfs=$WORKDIR/rootfs
  say "$tag: debootstrap --variant=minbase $release from $mirror"
  local log
  log=$(mktemp)
  "${APT_SUDO[@]}" debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    die "$tag: debootstrap failed (the end of its log is above)"
  }
  rm -f "$log"
  # What the official slim images drop: package lists and caches, documentation.
  "${APT_SUDO[@]}" rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  "${APT_SUDO[@]}" tar -C "$rootfs" -c . |
    "$DOCKER" import --change "LABEL $STANDIN_LABEL=1" --change 'CMD ["bash"]' - "$tag" >/dev/null
}

# Runs `docker build` on a context directory whose Dockerfile is given on stdin.
build_from() {
  local tag=$1 ctx=$2 log
  cat >"$ctx/Dockerfile"
  log=$(mktemp)
  "$DOCKER" build --label "$STANDIN_LABEL=1" -t "$tag" "$ctx" >"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    die "$tag: docker build failed (the end of its log is above)"
  }
  rm -f "$log"
}

build_rust() {
  local tag=$1 debian=$2 ver sysroot host_ver ctx
  ver=${tag##*:}
  ver=${ver%%-*}
  sysroot=${RUST_TOOLCHAIN_DIR:-$(rustc --print sysroot 2>/dev/null || true)}
  [[ -x $sysroot/bin/rustc ]] ||
    die "$tag: no Rust toolchain on this host to copy in (install rustup, or set RUST_TOOLCHAIN_DIR)"
  host_ver=$("$sysroot/bin/rustc" -V | awk '{print $2}')
  # A stand-in must not claim a version it is not: rust:1.95 holds a 1.95.x compiler.
  [[ $host_ver == "$ver" || $host_ver == "$ver".* ]] ||
    die "$tag: this host's toolchain is $host_ver, not $ver. Install it (rustup toolchain install $ver) and point RUST_TOOLCHAIN_DIR at it, or change RUST_VERSION in the Dockerfile"
  new_workdir
  ctx=$WORKDIR
  say "$tag: FROM $debian with the toolchain at $sysroot ($host_ver) and this host's CA bundle"
  # Hard links: the context is 500 MB of compiler, and the copy is only read.
  mkdir -p "$ctx/rust"
  cp -al "$sysroot/bin" "$sysroot/lib" "$ctx/rust/" 2>/dev/null || cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
  rm -rf "$ctx/rust/lib/rustlib/src" "$ctx/rust/lib/rustlib/"*/analysis
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  build_from "$tag" "$ctx" <<EOF
FROM $debian
RUN apt-get update \\
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
# The host's trust store: cargo reaches crates.io through the same TLS proxy as the host.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:\$PATH
RUN rustc -V && cargo -V
EOF
}

build_redis() {
  local tag=$1 debian=$2 ctx
  new_workdir
  ctx=$WORKDIR
  say "$tag: FROM $debian with Debian's redis-server"
  cat >"$ctx/entrypoint" <<'EOF'
#!/bin/sh
# The official image's behaviour: a command starting with an option runs redis-server, the server
# runs as the redis user on /data, and protected mode is off (without a config file Debian's
# redis-server refuses every client that is not on loopback, i.e. every other container).
set -e
if [ "${1#-}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
  shift
  chown -R redis:redis /data 2>/dev/null || true
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$@" --protected-mode no
fi
exec "$@"
EOF
  chmod +x "$ctx/entrypoint"
  build_from "$tag" "$ctx" <<EOF
FROM $debian
RUN apt-get update \\
    && apt-get install -y --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /data && chown redis:redis /data
COPY entrypoint /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
EOF
}

build_postgres() {
  local tag=$1 debian=$2 ctx
  new_workdir
  ctx=$WORKDIR
  say "$tag: FROM $debian with Debian's PostgreSQL"
  cat >"$ctx/entrypoint" <<'EOF'
#!/bin/bash
# The official image's contract, for what keyshard uses: POSTGRES_USER (default postgres),
# POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default the
# user), data in PGDATA (/var/lib/postgresql/data), *.sql and *.sh in /docker-entrypoint-initdb.d
# run once on a new cluster, and the server listening on every address.
set -euo pipefail
if [[ ${1:0:1} == - ]]; then
  set -- postgres "$@"
fi
if [[ $1 != postgres ]]; then
  exec "$@"
fi
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
chmod 3777 /var/run/postgresql
if [[ ! -s $PGDATA/PG_VERSION ]]; then
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [[ -z ${POSTGRES_PASSWORD:-} && $auth != trust ]]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  chown postgres "$pwfile"
  as_pg initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host="$auth" >/dev/null
  rm -f "$pwfile"
  printf 'host all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
  # Set up on the socket only, so nothing can connect before the database exists.
  as_pg pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [[ $db != postgres ]]; then
    as_pg psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -q \
      -c "CREATE DATABASE \"$db\"" >/dev/null
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case $f in
      *.sql) as_pg psql -v ON_ERROR_STOP=1 --username="$user" --dbname="$db" -q -f "$f" ;;
      *.sh) . "$f" ;;
    esac
  done
  as_pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "postgres stand-in: initialized $PGDATA (user $user, database $db)"
fi
shift
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
  chmod +x "$ctx/entrypoint"
  build_from "$tag" "$ctx" <<EOF
FROM $debian
# No cluster from the package: the entry point makes one in PGDATA on first start.
RUN mkdir -p /etc/postgresql-common \\
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \\
    && apt-get update \\
    && apt-get install -y --no-install-recommends postgresql \\
    && rm -rf /var/lib/apt/lists/* \\
    && ln -s "\$(ls -d /usr/lib/postgresql/*/bin | head -n 1)" /usr/local/pgbin \\
    && mkdir -p /docker-entrypoint-initdb.d
COPY entrypoint /usr/local/bin/docker-entrypoint.sh
ENV PATH=\$PATH:/usr/local/pgbin PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# Fast shutdown on docker stop, as the official image does.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
EOF
}

cmd_standins() {
  local rebuild=0 kind img debian started built=0 kept=0
  [[ ${1:-} == --rebuild ]] && rebuild=1
  engine_answers || die "no engine answers: deploy/engine.sh start"
  local images=()
  mapfile -t images < <(base_images)
  # The Debian stand-ins first: every other one is built FROM one.
  local ordered=() line
  for line in "${images[@]}"; do [[ $line == debian\ * ]] && ordered+=("$line"); done
  for line in "${images[@]}"; do [[ $line == debian\ * ]] || ordered+=("$line"); done
  for line in "${ordered[@]}"; do
    read -r kind img <<<"$line"
    [[ $kind != unknown ]] || die "no stand-in recipe for the base image $img (Dockerfile)"
    if image_exists "$img"; then
      if ((rebuild)) && [[ $("$DOCKER" image inspect -f "{{index .Config.Labels \"$STANDIN_LABEL\"}}" "$img" 2>/dev/null) == 1 ]]; then
        "$DOCKER" image rm "$img" >/dev/null
      else
        say "$img: present"
        kept=$((kept + 1))
        continue
      fi
    fi
    started=$SECONDS
    if [[ $kind == debian ]]; then
      build_debian "$img"
    else
      debian=debian:$(release_of "$img")-slim
      image_exists "$debian" || build_debian "$debian"
      "build_$kind" "$img" "$debian"
    fi
    say "$img: built in $((SECONDS - started))s"
    built=$((built + 1))
  done
  say "stand-ins: $built built, $kept present"
}

cmd_ensure() {
  cmd_install
  cmd_start
  if registry_reachable; then
    say "an image registry is reachable ($REGISTRY_WHY): base images come from it, no stand-ins"
    return 0
  fi
  say "no image registry is reachable ($REGISTRY_WHY): stand-in base images from Debian packages"
  cmd_standins
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

main() {
  local verb=${1:-}
  shift || true
  case $verb in
    ensure) cmd_ensure ;;
    install) cmd_install ;;
    start) cmd_start ;;
    registry) cmd_registry ;;
    standins) cmd_standins "$@" ;;
    names) cmd_names ;;
    help | -h | --help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
