#!/usr/bin/env bash
# `deploy-multi.sh demo` with fake cargo and apt-get on a PATH without redis-server: it installs
# redis-server (apt-get update once, then a quiet install), builds both binaries in release and
# hands over to `keyshard-sim demo`; without a keyshard-sim binary target it says so and fails.
# Run by `deploy-multi.sh test`, or alone.
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ((EUID != 0)); then
  # The install path runs as root; as another user the script prints the sudo command instead.
  echo "demo_test.sh: 0 passed, 0 failed (skipped: needs root)"
  exit 0
fi

# A PATH with the system's tools but no redis-server, and fakes of cargo and apt-get that log
# their calls. The fake apt-get "installs" redis-server by putting a stub on that PATH.
BIN=$TMP/bin
mkdir -p "$BIN"
for dir in /usr/local/bin /usr/bin /bin; do
  for tool in "$dir"/*; do
    name=${tool##*/}
    [[ $name == redis-server || -e $BIN/$name ]] || ln -s "$tool" "$BIN/$name"
  done
done
rm -f "$BIN/cargo" "$BIN/apt-get" "$BIN/sudo"
export CALLS=$TMP/calls.log FAKE_BIN=$BIN
cat >"$BIN/apt-get" <<'FAKE'
#!/bin/bash
echo "apt-get $*" >>"$CALLS"
if [[ $* == *install*redis-server* ]]; then
  printf '#!/bin/sh\nexit 0\n' >"$FAKE_BIN/redis-server"
  chmod +x "$FAKE_BIN/redis-server"
fi
FAKE
cat >"$BIN/cargo" <<'FAKE'
#!/bin/bash
echo "cargo $*" >>"$CALLS"
case $1 in
  metadata)
    [[ -n ${NO_SIM:-} ]] && echo '{"packages":[]}' && exit 0
    echo '{"packages":[{"targets":[{"kind":["bin"],"crate_types":["bin"],"name":"keyshard-sim","src_path":"x"}]}]}'
    ;;
  build)
    mkdir -p "$CARGO_TARGET_DIR/release"
    printf '#!/bin/sh\necho "keyshard-sim $*"\n' >"$CARGO_TARGET_DIR/release/keyshard-sim"
    chmod +x "$CARGO_TARGET_DIR/release/keyshard-sim"
    ;;
esac
FAKE
chmod +x "$BIN/apt-get" "$BIN/cargo"
export CARGO_TARGET_DIR=$TMP/target
# The calls made, one line, without the metadata queries.
calls() { grep -v '^cargo metadata' "$CALLS" | paste -sd'|'; }
demo_then_calls() { PATH=$BIN "$SCRIPT" demo >/dev/null && cat "$CALLS"; }

expect "demo installs redis-server, builds, runs the simulator's demo" 0 \
  "installing redis-server" "keyshard-sim demo --seed 7" -- env PATH="$BIN" "$SCRIPT" demo --seed 7
expect "  ... apt-get update once, then a quiet install, then the release build" 0 \
  "apt-get update -qq|apt-get install -y -qq --no-install-recommends redis-server|cargo build --release --locked -p keyshard-bot -p keyshard-sim" \
  -- calls
: >"$CALLS"
expect "a second demo installs nothing" 0 "!apt-get" -- demo_then_calls
expect "without the simulator binary: says so, exits non-zero" 1 "arrives with" "!keyshard-sim demo" \
  -- env PATH="$BIN" NO_SIM=1 "$SCRIPT" demo

finish
