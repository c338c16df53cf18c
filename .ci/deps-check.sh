#!/usr/bin/env bash
# The crate boundaries of ARCHITECTURE.md ("The crates and what each may
# import"), checked: each crate's build (normal dependencies, transitively)
# holds no workspace crate outside its allowed set. In particular the global
# allocator (alloc-host) never builds the engine.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A allowed=(
  [alloc-scope]=""
  [alloc-host]="alloc-scope"
  [alloc-core]="alloc-scope"
  [alloc-cuda]="alloc-core alloc-scope"
  [alloc-cuda-capi]="alloc-cuda alloc-core alloc-scope"
  [alloc-mps]="alloc-core alloc-scope"
  [alloc-toolkit]="alloc-host alloc-cuda alloc-core alloc-scope"
)
fail=0
for crate in "${!allowed[@]}"; do
  got=$(cargo tree -q -p "$crate" -e normal --prefix none \
        | grep -oE '^alloc-[a-z-]+' | sort -u | grep -vx "$crate" || true)
  for dep in $got; do
    if ! grep -qw -- "$dep" <<<"${allowed[$crate]}"; then
      echo "error: $crate builds $dep, which ARCHITECTURE.md does not allow it to import" >&2
      fail=1
    fi
  done
  echo "$crate: ${got//$'\n'/ }"
done
exit $fail
