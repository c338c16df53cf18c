#!/usr/bin/env bash
# Opens snapshots written by CachingAllocator::dump_snapshot and by
# `alloc-replay --dump-snapshot` with PyTorch's own torch/cuda/_memory_viz.py
# (stats, trace, segments, memory, trace_plot, segment_plot), and walks them
# as the MemoryViz page does (page_model.py).
#
# _memory_viz.py is not part of this repository. Get it from the torch wheel:
#   pip download torch --no-deps -d /tmp/torchwhl
#   unzip -j /tmp/torchwhl/torch-*.whl torch/cuda/_memory_viz.py -d /tmp/mv
# then run from the repository root:
#   bash alloc-core/tests/memory_viz/check.sh        (MEMORY_VIZ=/path/to/_memory_viz.py)
# Without the file this script says so and exits 0 (skipped).
set -euo pipefail

MV=${MEMORY_VIZ:-/tmp/mv/_memory_viz.py}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
traces=${TRACES:-$root/traces}
if [ ! -f "$MV" ]; then
    echo "SKIPPED memory_viz check: $MV not found (see the header of $0 for how to get it)"
    exit 0
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cd "$root"
SNAPSHOT_DUMP_DIR=$out cargo test -q -p alloc-core --test snapshot_pickle >/dev/null
if [ -f "$traces/resnet50_infer.csv" ]; then
    cargo run -q -p alloc-core --bin alloc-replay -- \
        --dump-snapshot "$out/replay_resnet50.pickle" "$traces/resnet50_infer.csv" >/dev/null
    cargo run -q -p alloc-core --bin alloc-replay -- --config expandable_segments:False \
        --dump-snapshot "$out/replay_resnet50_fixed.pickle" "$traces/resnet50_infer.csv" >/dev/null
fi

fail=0
check() { # name, command...: runs it, fails the script on error
    local name=$1
    shift
    if ! "$@" >"$out/$name.log" 2>&1; then
        echo "FAIL $name:"
        tail -20 "$out/$name.log"
        fail=1
    fi
}
flamegraph_pl=/tmp/$(id -u)_flamegraph.pl
n=0
for snap in "$out"/*.pickle; do
    base=$(basename "$snap" .pickle)
    n=$((n + 1))
    check "$base.stats" python3 "$MV" stats "$snap"
    check "$base.trace" python3 "$MV" trace "$snap"
    check "$base.trace_plot" python3 "$MV" trace_plot "$snap" -o "$out/$base.trace.html"
    check "$base.segment_plot" python3 "$MV" segment_plot "$snap" -o "$out/$base.segments.html"
    if [ -x "$flamegraph_pl" ]; then
        check "$base.segments" python3 "$MV" segments "$snap" -o "$out/$base.segments.svg"
        check "$base.memory" python3 "$MV" memory "$snap" -o "$out/$base.memory.svg"
    else
        # _memory_viz.py downloads flamegraph.pl for these; offline, collect
        # the flamegraph input lines it would render instead.
        check "$base.segments" python3 -c "
import pickle, sys
sys.path.insert(0, '$(dirname "$MV")')
import _memory_viz as mv
data = pickle.load(open('$snap', 'rb'))
for f in (mv.segments, mv.memory):
    lines = f(data, format_flamegraph=lambda text: text)
    assert lines.strip(), f.__name__ + ' produced nothing'
    print(lines)
"
    fi
    check "$base.page_model" python3 "$here/page_model.py" "$snap"
    grep -q "total_reserved" "$out/$base.stats.log" || { echo "FAIL $base: stats printed no totals"; fail=1; }
    echo "--- $base: $(grep -E '^segments:' "$out/$base.stats.log" || true), $(sed -n 2p "$out/$base.trace.log")"
done
# the scope that allocated is what the frames show
grep -q "scope:0:request-a" "$out/expandable.segments.log" || { echo "FAIL: no scope frame in segments"; fail=1; }
[ "$n" -ge 3 ] || { echo "FAIL: only $n snapshots written"; fail=1; }
if [ $fail -ne 0 ]; then
    echo "memory_viz check FAILED"
    exit 1
fi
echo "memory_viz check: $n snapshots opened by $MV (stats, trace, segments, memory, trace_plot, segment_plot, page model)"
