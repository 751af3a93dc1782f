#!/usr/bin/env bash
# apt.sh — sourced by deploy-multi.sh, deploy/ci.sh and deploy/engine.sh: install Debian packages
# for missing tools, quietly, as root or through `sudo -n`, with one `apt-get update` per run.
# The sourcing script defines say and die.

APT_UPDATED=0
APT_SUDO=()

# 0 when packages can be installed here (root, or sudo without a password); sets APT_SUDO.
apt_can_install() {
  ((EUID == 0)) && return 0
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    APT_SUDO=(sudo -n)
    return 0
  fi
  return 1
}

# apt_install PKG...: installs the packages or dies saying how to.
apt_install() {
  local log
  command -v apt-get >/dev/null 2>&1 ||
    die "$* missing and this system has no apt-get; install the equivalent with its package manager."
  apt_can_install || die "$* missing. Install, then run this again:
    sudo apt-get install -y $*"
  log=$(mktemp)
  if ((!APT_UPDATED)); then
    say "apt-get update"
    "${APT_SUDO[@]}" apt-get update -qq >"$log" 2>&1 || {
      cat "$log" >&2
      die "apt-get update failed"
    }
    APT_UPDATED=1
  fi
  say "installing $*"
  "${APT_SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >"$log" 2>&1 || {
    cat "$log" >&2
    die "apt-get install $* failed"
  }
  rm -f "$log"
}

# ensure_command CMD PKG: installs PKG when CMD is not on PATH.
ensure_command() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  apt_install "$pkg"
  command -v "$cmd" >/dev/null 2>&1 || die "installed $pkg but $cmd is still not on PATH"
}

# ensure_postgres: installs Debian's postgresql when no server binaries are found. Debian puts
# initdb and postgres in /usr/lib/postgresql/<version>/bin, off PATH; the tests and the
# simulator start a private server from there (keyshard-testkit's PostgresServer).
ensure_postgres() {
  local found
  found=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' || true)
  [[ -n $found ]] && return 0
  command -v initdb >/dev/null 2>&1 && return 0
  apt_install postgresql
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
    die "installed postgresql but found no /usr/lib/postgresql/*/bin/initdb"
}
