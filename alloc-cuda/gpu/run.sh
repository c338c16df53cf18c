#!/usr/bin/env bash
# The alloc-cuda GPU verification kit (built by alloc-cuda/gpu/bundle.sh).
# Runs on a machine with a CUDA GPU; needs no Rust. Python, PyTorch,
# torchvision and compute-sanitizer are used where present.
#
#   ./run.sh            logs and SUMMARY under ${OUT:-<kit>/results}
#
# The plan (each step's time budget, their sum under 4 minutes on an H100)
# is printed first. Every step ends PASS, FAIL, SKIP (a tool missing or
# unable to start: not the allocator's fault; the reason is printed) or
# NOT RUN (an earlier step made it pointless). The last line printed, and of
# SUMMARY, is the verdict:
#   VERDICT: PASS    no step failed (SKIPs do not count)        exit 0
#   VERDICT: FAIL    a step failed, timed out, or did not run   exit 1
#   VERDICT: NO-GPU  no CUDA driver library, or no device       exit 2
# A driver that is there but broken (a toolkit stubs/ libcuda, a library
# that does not match the kernel driver) is FAIL, with a hint.
set -u
KIT=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$KIT/results}
PY=${PYTHON:-python3}
LIB=$KIT/lib/liballoc_cuda_capi.so
DEADLINE_S=${DEADLINE_S:-300}
mkdir -p "$OUT"
SUMMARY=$OUT/SUMMARY
: > "$SUMMARY"
export ALLOC_CUDA_REQUIRE_GPU=1
export RUST_BACKTRACE=1
unset ALLOC_CONF   # the allocator's settings are set per step below

# The plan: name, budget in seconds, what the step shows. Budgets are
# timeouts; their sum is the most the kit can take.
PLAN=(
    "preflight|5|glibc the binaries need vs this machine's, driver version, libcuda on the loader path"
    "device|10|cuda_info: cuInit, driver, device, SMs and clock, libcuda mapped (never a stubs/ one), expandable segments"
    "release_tests|20|GPU tests, release build, one at a time, the graph-capture test excluded"
    "capture|10|the graph-capture test alone, in its own process"
    "torch_plugin|30|PyTorch through the plug-in: results vs the CPU, a thread with no CUDA context, torch.cuda.empty_cache()"
    "debug_tests|30|GPU tests, debug build (debug assertions), one at a time"
    "bench_ours_es_off|12|gpu_alloc, expandable segments off: latency vs cuMemAlloc and cuMemAllocAsync; traces"
    "bench_ours_es_on|12|gpu_alloc, expandable segments on"
    "bench_torch_es_off|18|torch_replay.py, PyTorch's allocator, expandable segments off"
    "bench_torch_es_on|18|torch_replay.py, PyTorch's allocator, expandable segments on"
    "resnet50|45|ResNet-50 outputs, PyTorch's allocator vs the plug-in (needs torchvision)"
    "sanitizer|25|compute-sanitizer memcheck over two GPU tests"
)
NSTEPS=${#PLAN[@]}
START=$(date +%s.%N)
declare -A STATUS TIME NOTE
ORDER=()
STOP=""        # set when the rest cannot run (the reason)
VERDICT_OVERRIDE=""

now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
note() { echo "$*" | tee -a "$SUMMARY"; }
budget_of() {
    local e
    for e in "${PLAN[@]}"; do
        IFS='|' read -r n b _ <<< "$e"
        [ "$n" = "$1" ] && { echo "$b"; return; }
    done
    echo 10
}
index_of() {
    local i=1 e
    for e in "${PLAN[@]}"; do
        [ "${e%%|*}" = "$1" ] && { echo "$i"; return; }
        i=$((i + 1))
    done
}

# record NAME STATUS SECONDS NOTE
record() {
    ORDER+=("$1")
    STATUS[$1]=$2
    TIME[$1]=$3
    NOTE[$1]=$4
    local line
    line=$(printf '[%2s/%s] %-18s %-7s %6s s  %s' "$(index_of "$1")" "$NSTEPS" "$1" "$2" "$3" "$4")
    note "$line"
}

# step NAME CMD...: runs CMD under the step's budget, output in NAME.log,
# classified: 0 PASS; 3 with a `SKIP:` line SKIP; a timeout FAIL; else FAIL.
# Returns the exit status.
step() {
    local name=$1
    shift
    if [ -n "$STOP" ]; then
        record "$name" "NOT RUN" 0.0 "$STOP"
        return 255
    fi
    local elapsed
    elapsed=$(secs_since "$START")
    if awk -v e="$elapsed" -v d="$DEADLINE_S" 'BEGIN { exit !(e > d) }'; then
        record "$name" "NOT RUN" 0.0 "past the kit's deadline (${DEADLINE_S} s)"
        return 255
    fi
    local budget t0 rc log=$OUT/$name.log
    budget=$(budget_of "$name")
    t0=$(now)
    if declare -F "$1" >/dev/null; then
        "$@" > "$log" 2>&1 # a function of this script: it bounds its own time
    else
        timeout -k 3 "$budget" "$@" > "$log" 2>&1
    fi
    rc=$?
    local took
    took=$(secs_since "$t0")
    case $rc in
        0) record "$name" PASS "$took" "$(figures "$name")" ;;
        2) if grep -q '^status: no-gpu' "$log"; then
               record "$name" NO-GPU "$took" "$(grep -m1 '^status: no-gpu' "$log" | sed 's/^status: no-gpu: //')"
           else
               record "$name" FAIL "$took" "exit 2: $(first_error "$log")"
           fi
           ;;
        3)
            if grep -q '^SKIP:' "$log"; then
                record "$name" SKIP "$took" "$(grep -m1 '^SKIP:' "$log" | sed 's/^SKIP: *//')"
            else
                record "$name" FAIL "$took" "exit 3; see $name.log"
            fi
            ;;
        124 | 137) record "$name" FAIL "$took" "timed out after its ${budget} s budget; see $name.log" ;;
        *) record "$name" FAIL "$took" "exit $rc: $(first_error "$log")" ;;
    esac
    return $rc
}

# The first line of a log that says what went wrong.
first_error() {
    local l names
    # a test binary's list of failed tests: the last "failures:" block
    names=$(awk '/^failures:$/ { n = NR } { line[NR] = $0 }
        END { if (n) for (i = n + 1; i <= NR && line[i] ~ /^    /; i++) { sub(/^ +/, "", line[i]); print line[i] } }' "$1" 2>/dev/null)
    if [ -n "$names" ]; then
        l="$(echo "$names" | wc -l) test(s) failed: $(echo "$names" | paste -sd' ' -)"
    else
        l=$(grep -m1 -E '^(error|hint):|panicked at|check .*FAILED|Error' "$1" 2>/dev/null)
    fi
    echo "${l:-see $(basename "$1")}" | cut -c1-300
}

# The key figures of a step that passed, from its log.
figures() {
    local log=$OUT/$1.log
    case $1 in
        device) grep -E '^(device 0|sms|driver|libcuda mapped|expandable segments):' "$log" | paste -sd';' - | cut -c1-400 ;;
        release_tests | debug_tests | capture)
            local r s
            r=$(grep -m1 '^test result' "$log" | sed 's/^test result: //; s/; finished in/, in/')
            s=$(grep -c 'SKIPPED' "$log")
            echo "$r; $s skipped (SKIPPED lines)"
            ;;
        torch_plugin | resnet50) echo "$(grep -c '^check .*: ok' "$log") checks ok" ;;
        bench_ours_*) grep -E '^(config|expandable segments):' "$log" | paste -sd';' - ;;
        bench_torch_*) grep -E '^config:' "$log" ;;
        sanitizer) grep -m1 'ERROR SUMMARY' "$log" ;;
        *) echo "" ;;
    esac
}

finish() {
    local v=$1 pass=0 fail=0 skip=0 notrun=0 s
    for s in "${ORDER[@]}"; do
        case ${STATUS[$s]} in
            PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;;
            SKIP) skip=$((skip + 1)) ;; *) notrun=$((notrun + 1)) ;;
        esac
    done
    note ""
    note "SUMMARY: $pass PASS, $fail FAIL, $skip SKIP, $notrun NOT RUN; $(secs_since "$START") s of the planned ${PLANNED} s"
    for s in "${ORDER[@]}"; do
        note "$(printf '  %-18s %-7s %6s s  %s' "$s" "${STATUS[$s]}" "${TIME[$s]}" "${NOTE[$s]}")"
    done
    if [ -f "$OUT/bench_summary.txt" ]; then
        note ""
        sed 's/^/  /' "$OUT/bench_summary.txt" | tee -a "$SUMMARY"
    fi
    note "VERDICT: $v"
    case $v in PASS) exit 0 ;; NO-GPU) exit 2 ;; *) exit 1 ;; esac
}

# ---- the plan -------------------------------------------------------------
PLANNED=0
note "alloc-cuda GPU kit: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
[ -f "$KIT/MANIFEST" ] && note "$(grep -E '^(commit|built|glibc-needed):' "$KIT/MANIFEST" | paste -sd';' -)"
note "plan (step, budget, what):"
for e in "${PLAN[@]}"; do
    IFS='|' read -r n b w <<< "$e"
    PLANNED=$((PLANNED + b))
    note "$(printf '  %-18s %4s s  %s' "$n" "$b" "$w")"
done
note "planned: ${PLANNED} s in all (budgets; under 240 s on an H100), deadline ${DEADLINE_S} s"
note ""

# ---- 1. preflight ----------------------------------------------------------
preflight() {
    local need have
    need=$(cat "$KIT/GLIBC_NEEDED" 2>/dev/null || echo unknown)
    have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
    [ -z "$have" ] && have=$(ldd --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+$')
    echo "glibc: this machine ${have:-unknown}, the kit needs ${need}"
    echo "driver: $(cat /proc/driver/nvidia/version 2>/dev/null | head -1 || true)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | sed 's/^/nvidia-smi: /'
    else
        echo "nvidia-smi: not installed"
    fi
    echo "libcuda in ldconfig: $(ldconfig -p 2>/dev/null | grep -oE '/[^ ]*libcuda\.so[^ ]*' | paste -sd' ' -)"
    local d
    for d in $(echo "${LD_LIBRARY_PATH:-}" | tr ':' ' '); do
        ls "$d"/libcuda.so* >/dev/null 2>&1 && echo "libcuda on LD_LIBRARY_PATH: $d"
        case $d in */stubs | */stubs/) echo "warning: $d is a toolkit stubs/ directory on LD_LIBRARY_PATH" ;; esac
    done
    echo "python: $($PY --version 2>&1 || echo none)"
    echo "torch installed: $($PY -c 'import importlib.util as u; print(u.find_spec("torch") is not None)' 2>/dev/null || echo False)"
    echo "torchvision installed: $($PY -c 'import importlib.util as u; print(u.find_spec("torchvision") is not None)' 2>/dev/null || echo False)"
    echo "compute-sanitizer: $(command -v compute-sanitizer || echo none)"
    if [ "$need" != unknown ] && [ -n "$have" ]; then
        if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
            echo "error: glibc $have is older than the $need the kit's binaries need"
            echo "hint: rebuild the kit (alloc-cuda/gpu/bundle.sh) on a distribution with glibc <= $have"
            return 1
        fi
    fi
    return 0
}
step preflight preflight
if [ "${STATUS[preflight]}" = FAIL ]; then
    STOP="the binaries cannot load here (preflight)"
fi
grep -E '^(glibc|nvidia-smi|warning):' "$OUT/preflight.log" | sed 's/^/    /' | tee -a "$SUMMARY"

# ---- 2. the device: NO-GPU ends the run here --------------------------------
step device "$KIT/bin/cuda_info"
case $? in
    0) ;;
    2)
        if [ "${STATUS[device]}" = NO-GPU ]; then
            STOP="no GPU"
            VERDICT_OVERRIDE=NO-GPU
        else
            STOP="the device did not open (step device)"
        fi
        ;;
    255) ;;
    *)
        grep -E '^hint:' "$OUT/device.log" | sed 's/^/    /' | tee -a "$SUMMARY"
        STOP="the device did not open (step device)"
        ;;
esac

# ---- 3. the GPU tests, release build; the capture alone, in its own process ----
CAPTURE_TEST=graph_capture_allocates_and_frees_without_breaking_the_capture
# One at a time: tests that synchronise the context or free segments would
# invalidate a capture, and the conformance oracle judges "out of memory"
# against the device's free memory, which parallel tests take.
step release_tests "$KIT/bin/gpu-tests-release" --test-threads=1 --skip "$CAPTURE_TEST"
step capture "$KIT/bin/gpu-tests-release" --exact "$CAPTURE_TEST" --test-threads=1

# ---- 4. PyTorch through the plug-in ----------------------------------------
torch_step() {
    local name=$1
    shift
    if [ -z "$STOP" ] && ! command -v "$PY" >/dev/null 2>&1; then
        record "$name" SKIP 0.0 "$PY not found"
        return
    fi
    step "$name" "$@"
}
torch_step torch_plugin "$PY" "$KIT/python/pytorch_plugin.py" "$LIB"

# ---- 5. the GPU tests, debug build, one at a time ---------------------------
step debug_tests "$KIT/bin/gpu-tests-debug" --test-threads=1

# ---- 6. benchmark: the same setting on both sides ---------------------------
traces=$(ls "$KIT"/traces/*.csv 2>/dev/null)
trace_args=()
for t in $traces; do trace_args+=(--trace "$t"); done
step bench_ours_es_off env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False "$KIT/bin/gpu_alloc" "${trace_args[@]}"
step bench_ours_es_on env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$KIT/bin/gpu_alloc" "${trace_args[@]}"
# shellcheck disable=SC2086
torch_step bench_torch_es_off env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False "$PY" "$KIT/python/torch_replay.py" $traces
# shellcheck disable=SC2086
torch_step bench_torch_es_on env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$PY" "$KIT/python/torch_replay.py" $traces
if [ -z "$STOP" ]; then
    "$PY" "$KIT/python/kit_summary.py" "$OUT" > "$OUT/bench_summary.txt" 2>&1 ||
        echo "bench summary: could not be made (kit_summary.py failed)" >> "$OUT/bench_summary.txt"
fi

# ---- 7. ResNet-50 -------------------------------------------------------------
torch_step resnet50 "$PY" "$KIT/python/torch_resnet_check.py" "$LIB"

# ---- 8. compute-sanitizer: a tool that cannot start is SKIP -------------------
# memcheck over two GPU tests; exit 0 PASS, 1 FAIL (a memcheck error or a
# failed test), 3 SKIP (not installed, or it could not start or finish here:
# under gVisor it refuses the device, "Device not supported").
sanitize() {
    if ! command -v compute-sanitizer >/dev/null 2>&1; then
        echo "SKIP: compute-sanitizer not installed"
        return 3
    fi
    local tmp=$OUT/sanitizer.raw rc
    timeout -k 3 "$(budget_of sanitizer)" compute-sanitizer --tool memcheck --error-exitcode 86 \
        "$KIT/bin/gpu-tests-release" --test-threads=1 kernel_writes pinned_pool > "$tmp" 2>&1
    rc=$?
    cat "$tmp"
    [ $rc -eq 0 ] && return 0
    if [ $rc -eq 86 ] || grep -qE 'ERROR SUMMARY: [1-9]' "$tmp"; then
        echo "error: memcheck found errors: $(grep -m1 'ERROR SUMMARY' "$tmp")"
        return 1
    fi
    if grep -q 'test result: FAILED' "$tmp"; then
        echo "error: a test failed under the sanitizer"
        return 1
    fi
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "SKIP: the sanitizer did not finish in its $(budget_of sanitizer) s budget"
        return 3
    fi
    echo "SKIP: the sanitizer could not run here: $(grep -m1 -iE 'not supported|unable|could not|error' "$tmp" | cut -c1-160)"
    return 3
}
step sanitizer sanitize

# ---- the verdict ----------------------------------------------------------------
[ -n "$VERDICT_OVERRIDE" ] && finish "$VERDICT_OVERRIDE"
for s in "${ORDER[@]}"; do
    case ${STATUS[$s]} in FAIL | "NOT RUN") finish FAIL ;; esac
done
finish PASS
