#!/usr/bin/env bash
# Builds the alloc-cuda GPU verification kit into DIR, to be copied to a
# machine with a GPU (CUDA driver, Python, PyTorch; no Rust, no network) and
# run there with DIR/run.sh. Runs on x86-64 Linux with the Rust toolchain.
#
#   alloc-cuda/gpu/bundle.sh DIR
#
# DIR receives:
#   run.sh                     the one command to run there (see run.sh)
#   bin/gpu-tests-debug        tests/gpu.rs, debug build (debug assertions)
#   bin/gpu-tests-release      tests/gpu.rs, release build
#   bin/cuda_info              examples/cuda_info.rs, release
#   bin/gpu_alloc              examples/gpu_alloc.rs (the benchmark), release
#   lib/liballoc_cuda_capi.so  the C ABI for PyTorch (alloc-cuda-capi)
#   python/                    alloc_cuda_torch.py and the PyTorch scripts
#   traces/                    traces/ of this repository
#   GLIBC_NEEDED               the newest GLIBC_x.y symbol version the binaries
#                              need (objdump -T), checked by run.sh first
#   MANIFEST                   commit, date, toolchain, glibc, sha256 of every file
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
CRATE=$(cd "$HERE/.." && pwd)
ROOT=$(cd "$CRATE/.." && pwd)
TRACES=${TRACES:-$ROOT/traces}
DIR=$1
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cd "$ROOT"

rm -rf "$DIR/bin" "$DIR/lib" "$DIR/python" "$DIR/traces"
mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/python" "$DIR/traces"

# The executable of test target `gpu` from cargo's JSON messages.
test_exe() {
    python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" \
            and m.get("executable"):
        exe = m["executable"]
if not exe:
    sys.exit("no executable for test target gpu in cargo output")
print(exe)'
}

echo "== GPU tests, debug build (debug assertions)"
exe=$(cargo test -p alloc-cuda --test gpu --no-run --message-format=json | test_exe)
cp "$exe" "$DIR/bin/gpu-tests-debug"
echo "== GPU tests, release build"
exe=$(cargo test -p alloc-cuda --test gpu --release --no-run --message-format=json | test_exe)
cp "$exe" "$DIR/bin/gpu-tests-release"
echo "== cuda_info, gpu_alloc, the C ABI library (release)"
cargo build -p alloc-cuda --release --example cuda_info --example gpu_alloc
cp "$CARGO_TARGET_DIR/release/examples/cuda_info" "$CARGO_TARGET_DIR/release/examples/gpu_alloc" "$DIR/bin/"
cargo build -p alloc-cuda-capi --release
cp "$CARGO_TARGET_DIR/release/liballoc_cuda_capi.so" "$DIR/lib/"

echo "== Python scripts and traces"
cp "$CRATE/python/alloc_cuda_torch.py" "$CRATE/python/kit_summary.py" "$DIR/python/"
cp "$CRATE/examples/pytorch_plugin.py" "$CRATE/examples/torch_replay.py" \
   "$CRATE/examples/torch_resnet_check.py" "$DIR/python/"
if [ -d "$TRACES" ]; then
    cp "$TRACES"/*.csv "$DIR/traces/" 2>/dev/null || true
    [ -f "$TRACES/README.md" ] && cp "$TRACES/README.md" "$DIR/traces/"
else
    echo "warning: no traces at $TRACES; the replay steps will have none" >&2
fi
cp "$HERE/run.sh" "$DIR/run.sh"
chmod +x "$DIR/run.sh" "$DIR"/bin/*
# Debug info makes the test binaries tens of MiB; symbols stay for backtraces.
if command -v strip >/dev/null; then
    strip --strip-debug "$DIR"/bin/* "$DIR"/lib/*.so
fi

# The newest glibc symbol version any binary needs: an older glibc on the
# GPU machine cannot load them, which run.sh says before running anything.
if command -v objdump >/dev/null; then
    objdump -T "$DIR"/bin/* "$DIR"/lib/*.so 2>/dev/null | grep -oE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' |
        sed 's/^GLIBC_//' | sort -uV | tail -1 > "$DIR/GLIBC_NEEDED"
else
    echo "warning: no objdump: GLIBC_NEEDED not computed; run.sh will not check glibc" >&2
    echo unknown > "$DIR/GLIBC_NEEDED"
fi

{
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "dirty: $(git -C "$ROOT" status --porcelain -- alloc-cuda alloc-core 2>/dev/null | wc -l) file(s) changed in alloc-cuda/alloc-core"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "rustc: $(rustc --version)"
    echo "glibc: $(ldd --version 2>/dev/null | head -1)"
    echo "glibc-needed: $(cat "$DIR/GLIBC_NEEDED")"
    (cd "$DIR" && find . -type f ! -name MANIFEST ! -path './results/*' | sort | xargs sha256sum)
} > "$DIR/MANIFEST"
echo "kit ready: $DIR ($(du -sh "$DIR" | cut -f1)); needs glibc >= $(cat "$DIR/GLIBC_NEEDED"); run $DIR/run.sh on the GPU machine"
