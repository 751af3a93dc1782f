#!/usr/bin/env bash
# Issue 11's size rules, checked from the code rather than trusted: no file under crates/*/src
# over 600 lines, no function over ~80 lines without a comment saying why it is long. The
# checker first runs on a made-up tree that breaks both rules, so a checker that passes
# everything fails here. Run by the CI runner, or alone.
set -euo pipefail
# shellcheck source=tests-deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

bad=$TMP/bad/crates/demo/src
mkdir -p "$bad"
{
  echo '//! A module over the limit, with a function that says nothing.'
  echo 'pub fn too_long() {'
  for i in $(seq 1 90); do echo "    let _x$i = $i;"; done
  echo '}'
  echo
  echo '/// Long because it is a table.'
  echo 'fn long_but_said() {'
  for i in $(seq 1 90); do echo "    let _y$i = $i;"; done
  echo '}'
  for i in $(seq 1 450); do echo "// filler $i"; done
} >"$bad/lib.rs"

expect "the checker catches a long file and an unexplained long function" 1 \
  "crates/demo/src/lib.rs: 637 lines" "fn too_long is 92 lines" "!long_but_said" \
  -- python3 tests-deploy/structure.py "$TMP/bad"

expect "no file over 600 lines, every long function says why" 0 "checked: 0 problem(s)" \
  -- python3 tests-deploy/structure.py "$ROOT"

finish
