#!/usr/bin/env bash
# The thread-heavy suites under ThreadSanitizer, the host and engine suites
# under AddressSanitizer. Not part of .ci/run (it takes tens of minutes);
# run it from the repository root after changing the scope registry, the
# tracking allocator or the engine's locking:
#
#     bash tools/sanitizers.sh            # both
#     bash tools/sanitizers.sh tsan       # or one of them
#     bash tools/sanitizers.sh asan
#
# Needs the nightly toolchain with rust-src (-Zbuild-std instruments std too;
# the script adds rust-src when it is missing) and a C compiler that knows
# -fsanitize (gcc or clang): mimalloc, which libmimalloc-sys compiles with the
# cc crate, is instrumented through CFLAGS_<target>.
#
# Prints one line per suite (test binary) and exits non-zero when any suite
# fails or any sanitizer report appears. Logs: target/sanitizers/*.log.
# Builds go to target/tsan and target/asan (a few GiB; the first build of
# each takes most of the time). CARGO_BUILD_JOBS limits the build's jobs.
#
# ThreadSanitizer: mimalloc is built with -fsanitize=thread -DMI_TSAN=1 so
# that its own synchronisation is seen. Nothing is suppressed: the run of
# 2026-12-06 had no report at all, mimalloc's included. tools/tsan.supp is
# read (TSAN_OPTIONS) and holds no suppression; add one only for a report
# outside this project's code, naming its function exactly, with the reason.
#
# AddressSanitizer: mimalloc is built with -DMI_TRACK_ASAN=1 -DMI_PADDING=0:
# it poisons freed blocks and unused page memory, so a use after free (ASan
# names it use-after-poison) and an access into free memory are caught, and
# blocks keep the size classes and placement of the normal build. The price
# of no padding: a block's whole size class is addressable, so an overrun
# into its own slack or into a live neighbour goes unseen. Leak detection is
# off (several tests leak on purpose), and allocator_may_return_null is on
# (tests ask System for 1 PiB and expect null, as from malloc).
#
# Timing on a 2-core VM shared with other builds (2026-12-06, -j1): the
# ThreadSanitizer build 12 min, the AddressSanitizer build 10 min, the runs
# under a minute together. Later runs rebuild only what changed.
set -uo pipefail
cd "$(dirname "$0")/.."

TOOLCHAIN=${SANITIZER_TOOLCHAIN:-nightly}
TARGET=${SANITIZER_TARGET:-x86_64-unknown-linux-gnu}
TARGET_ENV=$(echo "$TARGET" | tr '-' '_')
LOGS=target/sanitizers
mkdir -p "$LOGS"
export CARGO_TERM_COLOR=never
# opt-level 1 keeps debug assertions and overflow checks and runs the
# instrumented stress tests several times faster than opt-level 0.
export CARGO_PROFILE_DEV_OPT_LEVEL=1

# Every invocation selects the same packages, so both share one build
# (alloc-core's test features are unified the same way each time).
PACKAGES=(-p alloc-tests -p alloc-core -p alloc-scope)

# The thread-heavy suites: package-independent test target names.
TSAN_SUITES=(host_threads host_stress host_async host_teardown
  engine_threads_stress engine_sync_unlocked)

# Host and engine: every test binary of the `tests` crate and of alloc-core,
# and the unit tests of those two and of alloc-scope, the registry (`lib`),
# but host_zeroed: it checks that a 1 GiB
# zeroed block leaves RSS alone, and under ASan mimalloc's tracking poisons
# and unpoisons the block's shadow (128 MiB of RSS), so it cannot hold there.
asan_suites() {
  local f
  for f in tests/tests/*.rs alloc-core/tests/*.rs; do
    [ "$f" = tests/tests/host_zeroed.rs ] || basename "$f" .rs
  done
  echo lib
}

if ! rustup run "$TOOLCHAIN" rustc -V >/dev/null 2>&1; then
  echo "sanitizers: the $TOOLCHAIN toolchain is missing (rustup toolchain install $TOOLCHAIN)" >&2
  exit 2
fi
if ! rustup component list --toolchain "$TOOLCHAIN" --installed | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain "$TOOLCHAIN" || exit 2
fi

failed=0

# build SANITIZER SUITE...: builds every suite in one cargo invocation (one
# feature resolution: a run of a single test target would resolve alloc-core's
# dev-dependency features differently and rebuild half the tree), and lists
# "package-dir name executable" per suite in target/SANITIZER/suites.
build() {
  local san=$1 start log="$LOGS/$1-build.log" args=() s
  shift
  for s in "$@"; do
    if [ "$s" = lib ]; then args+=(--lib); else args+=(--test "$s"); fi
  done
  start=$(date +%s)
  if ! cargo "+$TOOLCHAIN" test -Zbuild-std --target "$TARGET" --target-dir "target/$san" \
    "${PACKAGES[@]}" "${args[@]}" --no-run --message-format=json >"$log.json" 2>"$log"; then
    echo "$san   build FAILED after $(($(date +%s) - start))s, log: $log"
    tail -20 "$log"
    exit 1
  fi
  sed -n 's|.*"manifest_path":"\([^"]*\)/Cargo.toml".*"target":{[^}]*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*|\1 \2 \3|p' \
    "$log.json" >"target/$san/suites"
  echo "$san   build ok, $(($(date +%s) - start))s"
}

# run_suite SANITIZER NAME: runs one test binary from its package's
# directory, as cargo test does; prints its summary line.
run_suite() {
  local san=$1 name=$2 log="$LOGS/$1-$2.log" dir exe start rc passed reports status
  if [ "$name" = lib ]; then
    # The crates' unit tests: one line each.
    while read -r dir n exe; do
      [ "$n" = alloc_core ] || [ "$n" = alloc_tests ] || [ "$n" = alloc_scope ] || continue
      run_one "$san" "lib:$n" "$dir" "$exe"
    done <"target/$san/suites"
    return
  fi
  read -r dir _ exe < <(awk -v n="$name" '$2 == n' "target/$san/suites")
  if [ -z "${exe:-}" ]; then
    echo "$san   $name: no executable was built"
    failed=1
    return
  fi
  run_one "$san" "$name" "$dir" "$exe"
}

run_one() {
  local san=$1 name=$2 dir=$3 exe=$4 log="$LOGS/$1-${2/:/-}.log" start rc passed reports status
  start=$(date +%s)
  (cd "$dir" && CARGO_MANIFEST_DIR="$dir" "$exe") >"$log" 2>&1
  rc=$?
  passed=$(grep -o 'test result: ok\. [0-9]* passed' "$log" | awk '{s += $4} END {print s + 0}')
  reports=$(grep -c -E '^(WARNING: ThreadSanitizer|==[0-9]+==ERROR: AddressSanitizer)' "$log")
  if [ "$rc" -eq 0 ] && [ "$reports" -eq 0 ]; then
    status=ok
  else
    status=FAILED
    failed=1
  fi
  printf '%-5s %-26s %-7s %4s tests passed, %s sanitizer reports, %ss (exit %s)%s\n' \
    "$san" "$name" "$status" "$passed" "$reports" "$(($(date +%s) - start))" "$rc" \
    "$([ "$status" = ok ] || echo ", log: $log")"
}

tsan() {
  export RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread"
  export "CFLAGS_$TARGET_ENV=-fsanitize=thread -DMI_TSAN=1"
  build tsan "${TSAN_SUITES[@]}"
  local s
  for s in "${TSAN_SUITES[@]}"; do
    TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 suppressions=$PWD/tools/tsan.supp" \
      run_suite tsan "$s"
  done
  unset RUSTFLAGS RUSTDOCFLAGS "CFLAGS_$TARGET_ENV"
}

asan() {
  export RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address"
  export "CFLAGS_$TARGET_ENV=-fsanitize=address -DMI_TRACK_ASAN=1 -DMI_PADDING=0"
  local suites s
  mapfile -t suites < <(asan_suites)
  build asan "${suites[@]}"
  # allocator_may_return_null: tests ask the System allocator for 1 PiB and
  # expect null, as malloc returns; ASan's malloc would abort instead.
  for s in "${suites[@]}"; do
    ASAN_OPTIONS="detect_leaks=0 allocator_may_return_null=1" run_suite asan "$s"
  done
  unset RUSTFLAGS RUSTDOCFLAGS "CFLAGS_$TARGET_ENV"
}

begin=$(date +%s)
case "${1:-all}" in
  tsan) tsan ;;
  asan) asan ;;
  all) tsan; asan ;;
  *) echo "usage: $0 [tsan|asan|all]" >&2; exit 2 ;;
esac
echo "sanitizers: $([ "$failed" -eq 0 ] && echo "no finding" || echo "FINDINGS or failures (see the lines above)"), $(($(date +%s) - begin))s in all"
exit "$failed"
