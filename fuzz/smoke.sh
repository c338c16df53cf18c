#!/usr/bin/env bash
# Short fuzz smoke run of every cargo-fuzz target (default 15 s each).
# Needs a nightly toolchain; without one it says so and exits 0.
# Usage: fuzz/smoke.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-15}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz/smoke.sh: SKIPPED — no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/smoke.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
for target in $(cargo +nightly fuzz list); do
    echo "fuzz/smoke.sh: $target for ${secs}s" >&2
    cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096
done
echo "fuzz/smoke.sh: all targets ran without a crash" >&2
