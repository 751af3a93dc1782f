#!/usr/bin/env bash
# stub-workspace.sh [DIR] — give every crate under DIR/crates stub sources, so that a tree holding
# only Cargo.toml files and Cargo.lock loads as a workspace and builds its dependencies.
#
# The Dockerfile uses it to cache the dependency layer; `deploy-multi.sh test` runs it on a copy of
# the manifests to check that the Docker build still loads the workspace (say, after a crate
# gained a `[[bin]]` with its own path).
#
# Each crate gets an empty src/lib.rs and a src/main.rs, plus every `.rs` file its manifest names
# with `path = "..."` (such as `[[test]] path = "tests/it/main.rs"`). Existing files are kept.
set -euo pipefail

root=${1:-.}
shopt -s nullglob
crates=("$root"/crates/*/Cargo.toml)
if ((${#crates[@]} == 0)); then
  echo "stub-workspace: no crates/*/Cargo.toml under $root" >&2
  exit 1
fi
for manifest in "${crates[@]}"; do
  dir=${manifest%/Cargo.toml}
  mkdir -p "$dir/src"
  [[ -e $dir/src/lib.rs ]] || : >"$dir/src/lib.rs"
  [[ -e $dir/src/main.rs ]] || echo 'fn main() {}' >"$dir/src/main.rs"
  sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest" |
    while IFS= read -r target; do
      mkdir -p "$(dirname "$dir/$target")"
      [[ -e $dir/$target ]] || echo 'fn main() {}' >"$dir/$target"
    done
done
