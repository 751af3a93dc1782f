#!/usr/bin/env bash
# deploy/grafana-dashboard.json: valid JSON, every panel queries something, and every series it
# queries is one the instances export (the metric names of the /metrics contract). Run by
# `deploy-multi.sh test`, or alone. Needs python3 (the docker-compose package brings it).
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DASHBOARD=$ROOT/deploy/grafana-dashboard.json
# The /metrics contract (ARCHITECTURE.md / the lead's brief). A histogram appears as _bucket.
CONTRACT="keyshard_interactions_total keyshard_claims_total keyshard_takeovers_total
keyshard_ack_latency_seconds_bucket keyshard_queue_depth keyshard_jobs_in_flight
keyshard_provider_requests_total keyshard_rate_limit_wait_seconds_total keyshard_redis_degraded
keyshard_cluster_alive_instances"

# Prints one line per problem, nothing when the dashboard is fine.
check_dashboard() {
  python3 - "$1" "$CONTRACT" <<'PY'
import json, re, sys
path, contract = sys.argv[1], set(sys.argv[2].split())
try:
    dash = json.load(open(path))
except ValueError as e:
    print(f"not valid JSON: {e}")
    sys.exit(0)
ids, used = set(), set()
for p in dash.get("panels", []):
    if p["id"] in ids:
        print(f"panel id {p['id']} used twice")
    ids.add(p["id"])
    if p.get("type") == "row":
        continue
    exprs = [t.get("expr", "") for t in p.get("targets", [])]
    if not exprs or not all(exprs):
        print(f"panel '{p.get('title')}' has no query")
    for e in exprs:
        used.update(re.findall(r"\bkeyshard_[a-z_]+", e))
for name in sorted(used - contract):
    print(f"queries {name}, which no instance exports")
for name in sorted(contract - used):
    print(f"does not show {name}")
PY
}

expect "the dashboard parses and queries exactly the exported series" 0 \
  "!not valid" "!panel" "!queries" "!does not show" -- check_dashboard "$DASHBOARD"
sed 's/keyshard_queue_depth/keyshard_queue_length/' "$DASHBOARD" >"$TMP/renamed.json"
expect "a renamed series is caught" 0 "queries keyshard_queue_length, which no instance exports" \
  "does not show keyshard_queue_depth" -- check_dashboard "$TMP/renamed.json"
printf '{"panels": [' >"$TMP/broken.json"
expect "broken JSON is caught" 0 "not valid JSON" -- check_dashboard "$TMP/broken.json"

finish
