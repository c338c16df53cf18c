#!/usr/bin/env bash
# The README's Install section works when pasted into a new crate: its
# `Cargo.toml` lines (the path pointed at this checkout) and its `main.rs`,
# built and run in an empty directory outside the repository; the line it
# prints must be the one the README promises.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
readme="$root/README.md"

# The fenced block that follows a `<!-- install:NAME -->` marker.
block() {
  awk -v m="<!-- install:$1 -->" '
    $0 == m { want = 1; next }
    want && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' "$readme"
}

toml=$(block toml)
rust=$(block rust)
[ -n "$toml" ] && [ -n "$rust" ] || { echo "error: README.md has no install:toml / install:rust blocks" >&2; exit 1; }
expected=$(sed -n 's/^It prints `\(.*\)`\..*/\1/p' "$readme" | head -1)
[ -n "$expected" ] || { echo "error: README.md does not say what the install example prints ('It prints \`...\`.')" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/newcrate/src"
{
  printf '[package]\nname = "newcrate"\nversion = "0.1.0"\nedition = "2024"\n\n'
  # The README's path is an example; point it at this checkout.
  printf '%s\n' "$toml" | sed -E "s#path = \"[^\"]*/alloc-host\"#path = \"$root/alloc-host\"#"
} > "$work/newcrate/Cargo.toml"
printf '%s\n' "$rust" > "$work/newcrate/src/main.rs"
grep -q "$root/alloc-host" "$work/newcrate/Cargo.toml" || { echo "error: the README's dependency line names no path to alloc-host" >&2; exit 1; }

got=$(cd "$work/newcrate" && CARGO_TARGET_DIR="$root/target/install-check" cargo run -q)
echo "$got"
if [ "$got" != "$expected" ]; then
  echo "error: the README's install example printed '$got', the README says '$expected'" >&2
  exit 1
fi
echo "install example OK: $got"
