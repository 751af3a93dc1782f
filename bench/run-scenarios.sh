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
# Issue 16: three seeds at 1.5x (the plot of the first), 1 -> 16 instances, 16 instances
# failover, the ack path at 1,000/s with 4 instances and at 200/s with 16, a revoked key.
[[ $want == all || $want == seeds ]] && run saturate-s1 --instances 4 --load-factor 1.5 --seed 1 --plot "$out/saturate.svg" "${common[@]}"
[[ $want == all || $want == seeds ]] && run saturate-s2 --instances 4 --load-factor 1.5 --seed 2 "${common[@]}"
[[ $want == all || $want == seeds ]] && run saturate-s3 --instances 4 --load-factor 1.5 --seed 3 "${common[@]}"
[[ $want == all || $want == scale16 ]] && run scale-16 --instances 16 --load-factor 1.5 "${common[@]}"
# The same at a quarter of the keys' rate (--provider-rpm 30): a quarter of the interactions
# per second, so that the cluster, not the 2 cores every instance and the simulator share,
# sets the figure (every instance receives and decodes every interaction).
quarter=(--users 500 --duration 60 --mix "chat=1,image=3,video=1" --provider-rpm 30
  --overload-wait-secs 5)
for seed in 1 2 3; do
  [[ $want == all || $want == seeds30 ]] && run saturate30-s$seed --instances 4 --load-factor 1.5 --seed $seed "${quarter[@]}"
done
[[ $want == all || $want == scale30 ]] && run scale30-1 --instances 1 --load-factor 1.5 "${quarter[@]}"
[[ $want == all || $want == scale30 ]] && run scale30-16 --instances 16 --load-factor 1.5 "${quarter[@]}"
[[ $want == all || $want == failover16 ]] && run failover-16 --instances 16 --load-factor 1.0 --kill 2@20 "${common[@]}"
[[ $want == all || $want == ack1000 ]] && run ack-1000 --instances 4 --users 2000 --mix ping=1 --rate 1000 --duration 30
[[ $want == all || $want == ack16 ]] && run ack-16 --instances 16 --users 2000 --mix ping=1 --rate 200 --duration 30
# Memory (issue 16): RSS per instance is sampled in every run (`memory.*`, every 10 s; the
# ack-1000 run above gives it at 1,000/s); a 10-minute soak at 200/s, pings with the job mix
# at about the keys' capacity, sampled each minute. Not part of `all` (ten minutes).
[[ $want == soak ]] && run soak --instances 4 --users 2000 --mix "ping=20,chat=1,image=3,video=1" --rate 200 --duration 600 --provider-rpm 120 --overload-wait-secs 5 --memory-every 60
[[ $want == all || $want == revoke ]] && run revoke --instances 4 --users 200 --rate 10 --mix chat=1 --duration 90 --revoke-key openai:2@20-60 --plot "$out/revoke.svg"
# Issue 15: a cold start of 4 instances x 4 shards with Discord's 5 s window and one bucket;
# session drops and invalidations (resumable and not) under load.
[[ $want == all || $want == gateway ]] && run gateway-cold --instances 4 --shards 4 --recommended-shards 4 --max-concurrency 1 --identify-window 5 --users 500 --mix ping=1 --rate 20 --duration 20
[[ $want == all || $want == gateway ]] && run gateway-drops --instances 4 --users 500 --mix ping=1 --rate 100 --duration 40 --drop-session 2@10 --invalidate-session 3@20 --invalidate-session-fresh 4@30
# Issue 14: one user at half the load against the same run without them; 200 images from
# one user with a daily limit of 10, with and without an instance killed mid-burst.
[[ $want == all || $want == fair ]] && run fair-noisy --instances 4 --load-factor 1.5 --noisy-user 0.5 "${common[@]}"
[[ $want == all || $want == fair ]] && run fair-quiet --instances 4 --load-factor 0.75 --noisy-user 0 "${common[@]}"
[[ $want == all || $want == quota ]] && run quota-burst --instances 4 --users 1 --mix image=1 --count 200 --duration 0 --quota image=10
[[ $want == all || $want == quota ]] && run quota-kill --instances 4 --users 1 --mix image=1 --count 200 --duration 1 --kill 2@0.5 --quota image=10
# Issue 14 §4: honest waiting at 3x capacity for five minutes. Every accepted job must be
# answered within its command's maximum wait (+10 %), every other request refused at once,
# and no waiting edit may follow an answer (overload.*, waiting.*). The maxima are set low
# (the defaults are 60/180/600 s) so the queue reaches them within the run and drains within
# the drain window. OVERRIDE: OVERLOAD_DURATION (e.g. 120 for a shorter run).
overload=(--users 500 --duration "${OVERLOAD_DURATION:-300}" --mix "chat=1,image=3,video=1"
  --provider-rpm 120 --overload-wait-secs 5 --max-wait chat=20 --max-wait image=30
  --max-wait video=60)
[[ $want == overload ]] && run overload --instances 4 --load-factor 3 "${overload[@]}"
exit 0
