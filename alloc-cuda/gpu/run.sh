#!/usr/bin/env bash
# The alloc-cuda GPU verification kit (built by alloc-cuda/gpu/bundle.sh).
# Runs on a machine with a CUDA GPU, Python and PyTorch; needs no Rust.
#
#   ./run.sh            logs and SUMMARY under ${OUT:-<kit>/results}
#
# Every step has its own timeout, the whole run a deadline (DEADLINE_S,
# 420 s by default, under 8 minutes). The last line printed (and of SUMMARY)
# is the verdict:
#   VERDICT: PASS    every required step passed          (exit 0)
#   VERDICT: FAIL    a required step failed or timed out (exit 1)
#   VERDICT: NO-GPU  no CUDA driver or device here       (exit 2)
# Optional steps (ResNet-50 without torchvision, compute-sanitizer where it
# is not installed, peer tests on one GPU) are reported as SKIP.
set -u
KIT=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$KIT/results}
DEADLINE_S=${DEADLINE_S:-420}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
SUMMARY=$OUT/SUMMARY
: > "$SUMMARY"
START=$(date +%s)
FAILED=0
LIB=$KIT/lib/liballoc_cuda_capi.so
export ALLOC_CUDA_REQUIRE_GPU=1
export RUST_BACKTRACE=1

note() { echo "$*" | tee -a "$SUMMARY"; }

finish() {
    note "elapsed: $(( $(date +%s) - START )) s"
    note "VERDICT: $1"
    case $1 in PASS) exit 0 ;; NO-GPU) exit 2 ;; *) exit 1 ;; esac
}

# step NAME LIMIT_S required|optional CMD...: runs CMD with a timeout of
# LIMIT_S (less if the deadline is nearer), output in $OUT/NAME.log.
step() {
    local name=$1 limit=$2 kind=$3
    shift 3
    local left=$(( DEADLINE_S - ($(date +%s) - START) - 5 ))
    if [ "$left" -le 5 ]; then
        note "$name: NOT RUN (deadline)"
        [ "$kind" = required ] && FAILED=1
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$(date +%s) rc
    timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local secs=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then
        note "$name: PASS (${secs} s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        note "$name: FAIL (timed out after ${limit} s)"
        [ "$kind" = required ] && FAILED=1
    else
        note "$name: FAIL (exit $rc, ${secs} s; see $name.log)"
        [ "$kind" = required ] && FAILED=1
    fi
    return $rc
}

note "alloc-cuda GPU kit: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
[ -f "$KIT/MANIFEST" ] && note "$(head -1 "$KIT/MANIFEST")"

# 1. Environment: driver, GPU, torch; never fails by itself.
{
    echo "== uname"; uname -a
    echo "== nvidia-smi"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi: not available"
    echo "== libcuda on the loader path"; (ldconfig -p 2>/dev/null | grep 'libcuda\.so') || echo "none in ldconfig"
    echo "== python and torch"
    $PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 || echo "torch: not importable"
    echo "== compute-sanitizer"; command -v compute-sanitizer || echo "not installed"
} > "$OUT/env.log" 2>&1
note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"
note "torch: $($PY -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"

# 2. cuda_info: the driver, the device, exactly one libcuda mapped. No driver
# or no device ends the run: NO-GPU.
step cuda_info 30 required "$KIT/bin/cuda_info"
rc=$?
if [ $rc -ne 0 ] && grep -qE 'CUDA unavailable|driver reports 0 device|cuDeviceGetCount failed|CUDA_ERROR_NO_DEVICE' "$OUT/cuda_info.log"; then
    note "no CUDA driver or device: $(grep -m1 'error' "$OUT/cuda_info.log")"
    finish NO-GPU
fi
[ $rc -ne 0 ] && finish FAIL
grep -E '^(device|memory|expandable|libcuda)' "$OUT/cuda_info.log" | sed 's/^/  /' | tee -a "$SUMMARY"

# 3. GPU tests: the debug build on one thread, the release build in parallel.
step gpu_tests_debug 150 required "$KIT/bin/gpu-tests-debug" --test-threads=1
step gpu_tests_release 90 required "$KIT/bin/gpu-tests-release"
for log in gpu_tests_debug gpu_tests_release; do
    grep -hE '^test result|SKIPPED' "$OUT/$log.log" 2>/dev/null | sed "s/^/  $log: /" | tee -a "$SUMMARY"
done

# 4. PyTorch through the plug-in: results equal to the CPU's, and the
# plug-in's own statistics prove it served the allocations.
step torch_plugin 120 required $PY "$KIT/python/pytorch_plugin.py" "$LIB"
grep -E '^(check|stats)' "$OUT/torch_plugin.log" 2>/dev/null | sed 's/^/  /' | tee -a "$SUMMARY"

# 5. ResNet-50 equality, default allocator vs the plug-in (needs torchvision).
if $PY -c 'import torchvision' >/dev/null 2>&1; then
    step resnet50 150 required $PY "$KIT/python/torch_resnet_check.py" "$LIB"
else
    note "resnet50: SKIP (torchvision not installed)"
fi

# 6. Benchmark: alloc+free latency (ours, cuMemAlloc, cuMemAllocAsync with
# release threshold u64::MAX) and the traces through ours; the same traces
# and sizes through PyTorch's caching allocator.
traces=$(ls "$KIT"/traces/*.csv 2>/dev/null)
trace_args=""
for t in $traces; do trace_args="$trace_args --trace $t"; done
step bench_ours 120 required "$KIT/bin/gpu_alloc" $trace_args
step bench_torch 120 required $PY "$KIT/python/torch_replay.py" $traces
$PY "$KIT/python/kit_summary.py" "$OUT/bench_ours.log" "$OUT/bench_torch.log" \
    > "$OUT/bench_summary.txt" 2>&1 || note "bench summary: could not be made (see bench_summary.txt)"
sed 's/^/  /' "$OUT/bench_summary.txt" | tee -a "$SUMMARY"

# 7. compute-sanitizer (memcheck) over the release GPU tests, where present.
if command -v compute-sanitizer >/dev/null 2>&1; then
    step sanitizer 120 optional compute-sanitizer --tool memcheck --error-exitcode 3 \
        "$KIT/bin/gpu-tests-release" --test-threads=1 kernel_writes pinned_pool
    [ $? -ne 0 ] && FAILED=1
else
    note "sanitizer: SKIP (compute-sanitizer not installed)"
fi

[ $FAILED -eq 0 ] && finish PASS
finish FAIL
