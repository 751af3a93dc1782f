#!/usr/bin/env bash
# ci.sh — everything CI checks, in one run that reports every failure, not just the first.
# `.ci/run` calls `./deploy-multi.sh test`, which runs this.
#
#   cargo fmt --check, cargo clippy -D warnings, cargo test --workspace, shellcheck on every shell
#   script, the compose file's config, the Dockerfile's stub workspace, the Docker engine with
#   stand-in base images where no registry answers (deploy/engine.sh), the image built from the
#   Dockerfile, the rehearsal (`./deploy-multi.sh rehearse`: the compose services under load and
#   chaos against the simulator as the compose `sim` service), and the shell tests in
#   tests-deploy/ (some of which use the engine and image).
#
# It ends with a line in cargo's `test result:` shape that sums the Rust tests and the shell
# test cases, so tools that read test logs recognise it.
#
# Environment knobs (all optional):
#   KEYSHARD_CI_DOCKER=0   skip the engine, image and rehearsal steps (reported as skipped): for a
#                          machine where Docker cannot run; CI itself runs them
#   KEYSHARD_CI_REHEARSE=0 skip the rehearsal only (about 5 minutes)
#   KEYSHARD_IMAGE         the image tag built (default keyshard:local, as in the compose file)
#   KEYSHARD_OFFLINE       passed to deploy/engine.sh (1: build stand-ins without probing)
#   CARGO_TARGET_DIR       where cargo builds (default ./target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DOCKER=${DOCKER:-docker}
IMAGE=${KEYSHARD_IMAGE:-keyshard:local}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROJECT=keyshard-ci
# The classic builder (see deploy/engine.sh).
export DOCKER_BUILDKIT=0

say() { printf 'ci: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}
# shellcheck source=deploy/apt.sh
source "$ROOT/deploy/apt.sh"

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

skip_step() {
  printf '\n=== %s: skipped (%s)\n' "$1" "$2"
  STEP_NAMES+=("$1")
  STEP_SECS+=(0)
  STEP_RESULTS+=(skipped)
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

# Instance numbers N of the compose file's keyshard-N services.
compose_instances() {
  sed -n 's/^  keyshard-\([0-9][0-9]*\):[[:space:]]*\(#.*\)\{0,1\}$/\1/p' docker-compose.multi.yml | sort -n
}

step_compose_config() {
  local compose_cmd=(docker-compose)
  command -v docker-compose >/dev/null 2>&1 || compose_cmd=("$DOCKER" compose)
  # The example file stands in for .env.multi: every variable the compose file interpolates.
  "${compose_cmd[@]}" --project-name "$PROJECT" --file docker-compose.multi.yml \
    --env-file .env.multi.example --profile sim config --quiet || return 1
  local services expected n
  services=$("${compose_cmd[@]}" --project-name "$PROJECT" --file docker-compose.multi.yml \
    --env-file .env.multi.example --profile sim config --services | sort | tr '\n' ' ') || return 1
  expected=$({ echo redis && echo postgres && echo sim && for n in $(compose_instances); do
    echo "keyshard-$n"
  done; } | sort | tr '\n' ' ')
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
# build steps before fetch only what they compile, and Cargo.lock may also list crates nothing
# here compiles (weak features). The image step below builds it for real.
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

ENGINE_OK=0
step_engine() {
  deploy/engine.sh ensure && ENGINE_OK=1
}

# The image as deploy-multi.sh build makes it, with the classic builder. The build log is long
# (every crate compiled); its steps are shown, and its end when it fails.
step_image() {
  local log rc=0
  log=$(mktemp)
  "$DOCKER" build -t "$IMAGE" . >"$log" 2>&1 || rc=$?
  grep -E '^Step [0-9]+/|Using cache' "$log" | paste -sd' ' | sed 's/ ---> Using cache/ (cached)/g; s/ Step /\nStep /g'
  if ((rc)); then
    tail -n 40 "$log"
    rm -f "$log"
    return "$rc"
  fi
  rm -f "$log"
  # A build after a source change leaves the previous builder stage (a GB of compiled crates)
  # and runtime image untagged. Tag the builder stage (cached: seconds), which keeps it and the
  # dependency layer under it for the next run, then remove the untagged images, so runs on one
  # machine do not fill its disk.
  "$DOCKER" build -q --target builder -t "${IMAGE%:*}:builder" . >/dev/null &&
    "$DOCKER" image prune -f | tail -n 1
  # The two binaries run from the runtime image.
  "$DOCKER" run --rm --network none --entrypoint keyshard "$IMAGE" --version &&
    "$DOCKER" run --rm --network none --entrypoint keyshard-sim "$IMAGE" --version &&
    IMAGE_OK=1
}

# The rehearsal: the image's keyshard-N services started by the operator verbs against the
# simulator as the compose `sim` service, under load with a bot killed, a rolling restart, a
# docker stop/start and Redis and Postgres restarts (deploy/rehearse.sh). Its report is kept in
# the target directory. Each of its checks counts as a test case.
IMAGE_OK=0
step_rehearsal() {
  local log rc=0
  log=$(mktemp)
  KEYSHARD_IMAGE=$IMAGE "$ROOT/deploy-multi.sh" rehearse --json "$TARGET_DIR/rehearsal.json" 2>&1 |
    tee "$log" || rc=$?
  # Its last lines: "rehearsal: ok in N s (C checks, F failed)".
  if [[ $(grep -E '^rehearsal: ' "$log" | tail -n 1) =~ \(([0-9]+)\ checks,\ ([0-9]+)\ failed\) ]]; then
    TEST_COUNTS[0]=$((TEST_COUNTS[0] + BASH_REMATCH[1] - BASH_REMATCH[2]))
    TEST_COUNTS[1]=$((TEST_COUNTS[1] + BASH_REMATCH[2]))
  fi
  rm -f "$log"
  return "$rc"
}

step_shell_tests() {
  local t rc=0 out
  # The deploy tests check env files with this build of `keyshard config check`.
  cargo build --locked -q -p keyshard-bot --bin keyshard || return 1
  export KEYSHARD_BIN=$TARGET_DIR/debug/keyshard
  ((ENGINE_OK)) || export KEYSHARD_TEST_NO_ENGINE=1
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

main() {
  local started=$SECONDS
  command -v cargo >/dev/null 2>&1 ||
    die "cargo is missing. Install Rust with rustup (https://rustup.rs), then run this again."
  ensure_command redis-server redis-server
  ensure_postgres # the ledger's tests and the simulator start a private Postgres
  ensure_command shellcheck shellcheck
  ensure_command python3 python3 # tests-deploy/dashboard_test.sh reads the dashboard JSON
  ensure_command curl curl       # deploy/engine.sh probes the image registry
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
  if [[ ${KEYSHARD_CI_DOCKER:-1} == 0 ]]; then
    skip_step "engine + stand-ins" "KEYSHARD_CI_DOCKER=0"
    skip_step "image build" "KEYSHARD_CI_DOCKER=0"
    skip_step "rehearsal" "KEYSHARD_CI_DOCKER=0"
  else
    run_step "engine + stand-ins" step_engine
    if ((ENGINE_OK)); then
      run_step "image build" step_image
    else
      skip_step "image build" "no engine"
    fi
    if [[ ${KEYSHARD_CI_REHEARSE:-1} == 0 ]]; then
      skip_step "rehearsal" "KEYSHARD_CI_REHEARSE=0"
    elif ((IMAGE_OK)); then
      run_step "rehearsal" step_rehearsal
    else
      skip_step "rehearsal" "no image"
    fi
  fi
  run_step "deploy shell tests" step_shell_tests

  local i failed=()
  printf '\n=== summary\n'
  for i in "${!STEP_NAMES[@]}"; do
    printf '%-7s %-20s %5ss\n' "${STEP_RESULTS[i]}" "${STEP_NAMES[i]}" "${STEP_SECS[i]}"
    [[ ${STEP_RESULTS[i]} != FAILED ]] || failed+=("${STEP_NAMES[i]}")
  done
  local verdict=ok
  ((${#failed[@]} == 0)) || verdict=FAILED
  # A failed step without failed tests (fmt, clippy, shellcheck, compose config, engine, image)
  # counts as one failure.
  local failures=$((TEST_COUNTS[1]))
  ((${#failed[@]} > 0 && failures == 0)) && failures=${#failed[@]}
  if ((${#failed[@]})); then
    echo "ci: FAILED steps: ${failed[*]}"
  else
    echo "ci: all steps passed"
  fi
  printf 'test result: %s. %d passed; %d failed; %d ignored; 0 measured; 0 filtered out; finished in %ds\n' \
    "$verdict" "${TEST_COUNTS[0]}" "$failures" "${TEST_COUNTS[2]}" $((SECONDS - started))
  [[ $verdict == ok ]]
}

main "$@"
