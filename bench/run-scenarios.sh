#!/usr/bin/env bash
# Runs the issue-6 scenarios of BENCHMARKS.md with the release binaries and writes one JSON
# report each into bench/results/ (ignored by git). Each run is bounded (60 s of load plus the
# drain) and talks only to loopback.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
sim=./target/release/keyshard-sim
out=bench/results
mkdir -p "$out"
# Fake keys at 120 requests/min on every lane; a mix that loads every lane alike (three image
# providers per key set). The instances run with their defaults: the simulator tells them its
# fake's video render time (MINIMAX_VIDEO_RENDER_SECS), as an operator does for the real model.
common=(--users 500 --duration 60 --mix "chat=1,image=3,video=1" --provider-rpm 120
  --overload-wait-secs 5)
run() {
  local name=$1
  shift
  echo "== $name: $sim run $*"
  rm -rf "${out:?}/$name"
  "$sim" run "$@" --json "$out/$name.json" --run-dir "$out/$name"
}
want=${1:-all}
[[ $want == all || $want == saturate ]] && run saturate --instances 4 --load-factor 1.5 "${common[@]}"
[[ $want == all || $want == scale ]] && run scale-1 --instances 1 --load-factor 1.5 "${common[@]}"
[[ $want == all || $want == skew ]] && run skew --instances 4 --load-factor 1.5 --skew zipf:1.1 "${common[@]}"
[[ $want == all || $want == skew ]] && run skew-static --instances 4 --load-factor 1.5 --skew zipf:1.1 --instance-env TAKEOVER=off "${common[@]}"
[[ $want == all || $want == failover ]] && run failover --instances 4 --load-factor 1.0 --kill 2@20 "${common[@]}"
[[ $want == all || $want == redis ]] && run redis-restart --instances 4 --load-factor 1.0 --redis-restart 20 "${common[@]}"
# The usage ledger (every run above has it on and reports ledger.*): Postgres down for 10 s
# under load, and the ack latency at 200/s with the ledger on and off.
[[ $want == all || $want == postgres ]] && run postgres-restart --instances 4 --load-factor 1.0 --postgres-restart 20 "${common[@]}"
[[ $want == all || $want == ack ]] && run ack-ledger --instances 4 --users 500 --mix ping=1 --rate 200 --duration 30
[[ $want == all || $want == ack ]] && run ack-no-ledger --instances 4 --users 500 --mix ping=1 --rate 200 --duration 30 --no-ledger
exit 0
