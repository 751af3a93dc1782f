#!/usr/bin/env bash
# The layering ARCHITECTURE.md promises, checked from the code rather than trusted:
# - which crates may depend on redis, serenity, poise and sqlx (cargo metadata's resolved
#   graph, normal and build edges, transitively: a crate that pulls one in through another
#   breaks the layer just the same);
# - the bot's imports run one way (edge → commands → {context, respond, replies}); only app
#   names edge, and the leaf modules name nothing above them.
# The checker is run once against a made-up graph that breaks every rule, so a checker that
# passes everything fails here. Run by the CI runner, or alone.
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

host=$(rustc -vV | sed -n 's/^host: //p')
# --filter-platform: a fresh cargo cache has no Windows-only crates, and offline metadata for
# every platform would need them.
cargo metadata --format-version 1 --offline --locked --filter-platform "$host" >"$TMP/meta.json"

cat >"$TMP/check.py" <<'PY'
"""Reads cargo metadata JSON on stdin; prints one line per broken rule, exits 1 on any."""
import json
import sys

# crate -> names that must not be in its transitive normal/build dependencies.
FORBIDDEN = {
    "keyshard-routing": {"redis", "tokio", "serenity", "poise", "sqlx", "reqwest"},
    "keyshard-types": {"redis", "tokio", "serenity", "poise", "sqlx", "reqwest"},
    "keyshard-providers": {"redis", "serenity", "poise", "sqlx"},
    "keyshard-cluster": {"serenity", "poise", "sqlx", "reqwest", "async-openai"},
    "keyshard-ledger": {"serenity", "poise", "reqwest", "async-openai"},
}
# crate -> workspace crates it must not depend on (directly or not).
NOT_ON = {
    "keyshard-cluster": {"keyshard-providers", "keyshard-ledger", "keyshard-bot", "keyshard-sim"},
    "keyshard-providers": {"keyshard-cluster", "keyshard-ledger", "keyshard-bot", "keyshard-sim"},
    "keyshard-ledger": {"keyshard-providers", "keyshard-bot", "keyshard-sim"},
    "keyshard-routing": {"keyshard-cluster", "keyshard-providers", "keyshard-bot"},
    # The simulator judges the cluster from what it observed itself, never through the code
    # under test: no workspace crate but the testkit.
    "keyshard-sim": {"keyshard-routing", "keyshard-cluster", "keyshard-providers",
                     "keyshard-ledger", "keyshard-bot", "keyshard-types"},
}
# Direct dependencies (any kind) allowed only in these crates.
ONLY_IN = {
    "serenity": {"keyshard-bot", "keyshard-sim"},
    "poise": {"keyshard-bot"},
    "sqlx": {"keyshard-ledger"},
}

meta = json.load(sys.stdin)
names = {p["id"]: p["name"] for p in meta["packages"]}
members = {names[i] for i in meta["workspace_members"]}
edges = {}
for node in meta["resolve"]["nodes"]:
    out = []
    for dep in node["deps"]:
        kinds = {k["kind"] for k in dep["dep_kinds"]}
        if kinds & {None, "build"}:
            out.append(dep["pkg"])
    edges[node["id"]] = out
by_name = {names[i]: i for i in edges if names[i] in members}

def closure(start):
    seen, todo = set(), [start]
    while todo:
        for d in edges.get(todo.pop(), []):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return {names[d] for d in seen}

broken = []
for crate, bad in FORBIDDEN.items():
    if crate in by_name:
        for b in sorted(closure(by_name[crate]) & bad):
            broken.append(f"{crate} depends on {b}")
for crate, bad in NOT_ON.items():
    if crate in by_name:
        for b in sorted(closure(by_name[crate]) & bad):
            broken.append(f"{crate} depends on {b}")
for p in meta["packages"]:
    if p["name"] not in members:
        continue
    for d in p["dependencies"]:
        allowed = ONLY_IN.get(d["name"])
        if allowed is not None and p["name"] not in allowed:
            broken.append(f"{p['name']} names {d['name']} directly")
for line in broken:
    print(line)
print(f"checked {len(members)} workspace crates")
sys.exit(1 if broken else 0)
PY

# A made-up graph that breaks each kind of rule once.
cat >"$TMP/bad.json" <<'JSON'
{"workspace_members": ["r", "p", "c"],
 "packages": [
  {"id": "r", "name": "keyshard-routing", "dependencies": []},
  {"id": "p", "name": "keyshard-providers", "dependencies": [{"name": "poise"}]},
  {"id": "c", "name": "keyshard-cluster", "dependencies": []},
  {"id": "x", "name": "redis", "dependencies": []},
  {"id": "y", "name": "poise", "dependencies": []}],
 "resolve": {"nodes": [
  {"id": "r", "deps": [{"pkg": "c", "dep_kinds": [{"kind": null}]}]},
  {"id": "c", "deps": [{"pkg": "x", "dep_kinds": [{"kind": null}]}]},
  {"id": "p", "deps": [{"pkg": "y", "dep_kinds": [{"kind": null}]},
                       {"pkg": "x", "dep_kinds": [{"kind": "dev"}]}]},
  {"id": "x", "deps": []}, {"id": "y", "deps": []}]}}
JSON

expect "the checker catches a broken graph" 1 \
  "keyshard-routing depends on redis" "keyshard-routing depends on keyshard-cluster" \
  "keyshard-providers depends on poise" "keyshard-providers names poise directly" \
  "!keyshard-providers depends on redis" \
  -- python3 "$TMP/check.py" <"$TMP/bad.json"

expect "crates keep to their layer (redis, serenity, poise, sqlx)" 0 "checked" \
  -- python3 "$TMP/check.py" <"$TMP/meta.json"

bot=crates/keyshard-bot/src
# only_names FILES... : prints the lines of FILES that name one of the bot's upper modules.
upper_imports() {
  grep -nE "crate::(edge|commands|work|respond|app|http|cli)\b|crate::\{[^}]*\b(edge|commands|work|respond|app|http|cli)\b" "$@" || true
}
expect "only app and lib name edge" 0 "!crate::edge" \
  -- bash -c "grep -rnE 'crate::(edge|\\{[^}]*\\bedge\\b)' --include=*.rs $bot | grep -vE '^$bot/(app|lib|edge)\\.rs:' || true"
expect "commands never name edge" 0 "!edge" \
  -- bash -c "grep -rnE '\\bedge\\b' $bot/commands | grep -vE '^\\S+:[0-9]+:\\s*//' || true"
expect "the leaf modules (context, clock, redact, replies) name nothing above them" 0 "!crate::" \
  -- bash -c "$(declare -f upper_imports); upper_imports $bot/context.rs $bot/clock.rs $bot/redact.rs -r $bot/replies"
expect "respond and work never name edge, commands or app" 0 "!crate::" \
  -- bash -c "grep -rnE 'crate::(edge|commands|app)\\b' $bot/respond.rs $bot/work || true"

finish
