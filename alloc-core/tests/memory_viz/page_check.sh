#!/usr/bin/env bash
# Renders snapshots in PyTorch's MemoryViz page (torch/utils/viz/MemoryViz.js,
# the page behind pytorch.org/memory_viz) in headless Chromium, offline, and
# fails if the page throws. Screenshots land in $OUT (default: a temp dir,
# kept).
#
# Needs, none of them part of this repository:
#   MEMORY_VIZ_JS  torch/utils/viz/MemoryViz.js from a PyTorch checkout
#   D3_JS          d3 v5's dist/d3.min.js (`npm pack d3@5; tar xzf d3-5*.tgz`)
#   chromium       (`apt-get install chromium`)
# MemoryViz.js imports d3 from a CDN; this script rewrites those imports to
# the local d3 and loads each snapshot's raw bytes through the page's own
# add_local_files, as `_memory_viz.py trace_plot` does (but without
# re-pickling). Usage, from the repository root, with snapshots given or
# written by the snapshot_pickle tests:
#   MEMORY_VIZ_JS=... D3_JS=... bash alloc-core/tests/memory_viz/page_check.sh [SNAPSHOT.pickle...]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
for need in "${MEMORY_VIZ_JS:-}" "${D3_JS:-}"; do
    if [ -z "$need" ] || [ ! -f "$need" ]; then
        echo "SKIPPED MemoryViz page check: set MEMORY_VIZ_JS and D3_JS (see the header of $0)"
        exit 0
    fi
done
chromium=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chromium" ]; then
    echo "SKIPPED MemoryViz page check: no chromium"
    exit 0
fi

out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
cp "$D3_JS" "$site/d3.min.js"
# the CDN imports become the d3 global loaded by a classic script
grep -v '^import .* from "https://cdn' "$MEMORY_VIZ_JS" |
    sed '1a const d3 = window.d3;\nconst {axisLeft, scaleLinear, zoom, zoomIdentity, brushX} = window.d3;' \
        >"$site/MemoryViz.js"

snaps=("$@")
if [ ${#snaps[@]} -eq 0 ]; then
    (cd "$root" && SNAPSHOT_DUMP_DIR=$site cargo test -q -p alloc-core --test snapshot_pickle >/dev/null)
    snaps=("$site"/*.pickle)
fi

fail=0
for snap in "${snaps[@]}"; do
    base=$(basename "$snap" .pickle)
    for view in "Active Memory Timeline" "Allocator State History" "Active Cached Segment Timeline"; do
        tag=$base.$(echo "$view" | tr ' ' '_')
        python3 - "$snap" "$view" >"$site/$tag.html" <<'PY'
import base64, json, sys
raw = open(sys.argv[1], "rb").read()
raw += b"\0" * (-len(raw) % 3)  # as _memory_viz.py pads before base64
files = json.dumps([{"name": sys.argv[1].rsplit("/", 1)[-1], "base64": base64.b64encode(raw).decode()}])
print(f"""<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<script>
window.onerror = (m, s, l, c) => {{
  const p = document.createElement('pre');
  p.textContent = 'PAGE_ERROR ' + m + ' at ' + l + ':' + c;
  document.body.prepend(p);
}};
</script>
<script src="d3.min.js"></script>
<script type="module">
import {{add_local_files}} from "./MemoryViz.js";
add_local_files({files}, {json.dumps(sys.argv[2])});
</script></body></html>""")
PY
        python3 -m http.server 0 --bind 127.0.0.1 --directory "$site" >"$site/http.log" 2>&1 &
        server=$!
        port=""
        for _ in $(seq 50); do
            port=$(grep -o 'port [0-9]*' "$site/http.log" | grep -o '[0-9]*' || true)
            [ -n "$port" ] && break
            sleep 0.1
        done
        url="http://127.0.0.1:$port/$tag.html"
        flags=(--headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,900 --virtual-time-budget=8000)
        timeout 60 "$chromium" "${flags[@]}" --screenshot="$out/$tag.png" "$url" >/dev/null 2>&1 || true
        dom=$(timeout 60 "$chromium" "${flags[@]}" --dump-dom "$url" 2>/dev/null || true)
        kill "$server"
        wait "$server" 2>/dev/null || true
        if grep -q "PAGE_ERROR [A-Z]" <<<"$dom"; then
            echo "FAIL $tag: $(grep -o 'PAGE_ERROR [A-Z][^<]*' <<<"$dom" | head -1)"
            fail=1
        elif ! grep -q "<svg" <<<"$dom" || [ ! -s "$out/$tag.png" ]; then
            echo "FAIL $tag: the page drew nothing"
            fail=1
        else
            echo "ok   $tag -> $out/$tag.png"
        fi
    done
done
[ $fail -eq 0 ] || { echo "MemoryViz page check FAILED"; exit 1; }
echo "MemoryViz page check: ${#snaps[@]} snapshots drawn in 3 views each"
