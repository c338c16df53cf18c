"""Summarise the kit's benchmark logs side by side (no torch needed).

    python3 kit_summary.py RESULTS_DIR          # the kit's four bench logs
    python3 kit_summary.py bench_ours.log bench_torch.log

With RESULTS_DIR it reads bench_{ours,torch}_es_{off,on}.log (expandable
segments off and on, the same setting on both sides) and prints, per
setting, the side-by-side summary, then the rows to paste into
benches/RESULTS.md's GPU section (markdown tables).

bench_ours.log is the output of the `gpu_alloc` example: a `device:` line,
a CSV of alloc+free latency (`bytes,ours_ns,cuMemAlloc_ns,cuMemAllocAsync_ns,
ratio_async,ratio_sync`) and one JSON object per replayed trace (alloc-core's
ReplayResult). bench_torch.log is the output of torch_replay.py: one JSON
object per trace and a `bytes,torch_ns` CSV. Either may be missing or cut
short (a step that failed); what is there is summarised.
"""

import json
import os
import sys


def parse(text):
    """(latency rows by bytes, trace results by name, device) of one log."""
    latency, traces, device = {}, {}, None
    header = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("device:"):
            device = line.split(":", 1)[1].strip()
        elif line.startswith("{"):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            traces[trace_name(r.get("trace", "?"))] = r
        elif line.startswith("bytes,"):
            header = line.split(",")
        elif header and line[0].isdigit():
            values = line.split(",")
            if len(values) == len(header):
                row = dict(zip(header, values))
                latency[int(row["bytes"])] = {k: to_float(v) for k, v in row.items() if k != "bytes"}
    return latency, traces, device


def trace_name(path):
    """`bert_serving` for `.../bert_serving.csv` or `bert_serving`."""
    base = os.path.basename(str(path))
    return base[:-4] if base.endswith(".csv") else base


def to_float(v):
    try:
        return float(v)
    except ValueError:
        return float("nan")


def mib(b):
    return f"{b / 2**20:.1f} MiB" if b is not None else "-"


def summary(ours_text, torch_text):
    """The summary table as text."""
    lat_o, tr_o, device = parse(ours_text)
    lat_t, tr_t, device_t = parse(torch_text)
    out = [f"device: {device or device_t or 'unknown'}"]
    out.append("alloc+free ns (cache hit): bytes  ours  cuMemAlloc  cuMemAllocAsync  torch")
    for b in sorted(set(lat_o) | set(lat_t)):
        o = lat_o.get(b, {})
        t = lat_t.get(b, {})
        cells = [o.get("ours_ns"), o.get("cuMemAlloc_ns"), o.get("cuMemAllocAsync_ns"), t.get("torch_ns")]
        out.append(f"  {b:>10}  " + "  ".join("-" if c is None else f"{c:.0f}" for c in cells))
    out.append("traces: name  peak reserved ours/torch  efficiency ours/torch  device allocs ours/torch")
    for name in sorted(set(tr_o) | set(tr_t)):
        o, t = tr_o.get(name, {}), tr_t.get(name, {})
        eff_o = o.get("efficiency")
        eff_t = t.get("efficiency")
        out.append(
            f"  {name}  {mib(o.get('peak_reserved_bytes'))} / {mib(t.get('peak_reserved_bytes'))}"
            f"  {'-' if eff_o is None else f'{eff_o:.3f}'} / {'-' if eff_t is None else f'{eff_t:.3f}'}"
            f"  {o.get('device_allocs', '-')} / {t.get('num_device_alloc', '-')}"
            f"  driver calls {o.get('driver_calls', '-')} / {t.get('driver_calls', '-')}"
        )
    return "\n".join(out)


SETTINGS = (("off", "expandable_segments:False"), ("on", "expandable_segments:True"))


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def results_rows(logs):
    """Markdown rows for benches/RESULTS.md from {(side, setting): text}."""
    lat_rows, trace_rows, device = [], [], None
    for es, _ in SETTINGS:
        lat_o, tr_o, dev_o = parse(logs.get(("ours", es), ""))
        lat_t, tr_t, dev_t = parse(logs.get(("torch", es), ""))
        device = device or dev_o or dev_t
        for b in sorted(set(lat_o) | set(lat_t)):
            o, t = lat_o.get(b, {}), lat_t.get(b, {})
            lat_rows.append(f"| {es} | {b} | {fmt(o.get('ours_ns'), '.0f')} | {fmt(o.get('cuMemAlloc_ns'), '.0f')} "
                            f"| {fmt(o.get('cuMemAllocAsync_ns'), '.0f')} | {fmt(t.get('torch_ns'), '.0f')} |")
        for name in sorted(set(tr_o) | set(tr_t)):
            o, t = tr_o.get(name, {}), tr_t.get(name, {})
            trace_rows.append(
                f"| {es} | {name} | {mib(o.get('peak_reserved_bytes'))} / {mib(t.get('peak_reserved_bytes'))} "
                f"| {fmt(o.get('efficiency'), '.3f')} / {fmt(t.get('efficiency'), '.3f')} "
                f"| {o.get('driver_calls', '-')} / {t.get('driver_calls', '-')} |")
    out = [f"GPU rows for benches/RESULTS.md (device: {device or 'unknown'}):", ""]
    out.append("| expandable | bytes | ours ns | cuMemAlloc ns | cuMemAllocAsync ns | PyTorch ns |")
    out.append("|---|---|---|---|---|---|")
    out.extend(lat_rows or ["| - | - | - | - | - | - |"])
    out.append("")
    out.append("| expandable | trace | peak reserved ours / PyTorch | efficiency ours / PyTorch "
               "| driver calls ours / PyTorch |")
    out.append("|---|---|---|---|---|")
    out.extend(trace_rows or ["| - | - | - | - | - |"])
    return "\n".join(out)


def summarise_dir(d):
    """Both settings' summaries and the RESULTS rows, from the kit's logs in `d`."""
    logs = {(side, es): read(os.path.join(d, f"bench_{side}_es_{es}.log"))
            for side in ("ours", "torch") for es, _ in SETTINGS}
    out = []
    for es, conf in SETTINGS:
        out.append(f"== expandable segments {es} ({conf}, both sides)")
        out.append(summary(logs[("ours", es)], logs[("torch", es)]))
    out.append("")
    out.append(results_rows(logs))
    return "\n".join(out)


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def main(argv):
    if len(argv) == 2 and os.path.isdir(argv[1]):
        print(summarise_dir(argv[1]))
        return 0
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    print(summary(read(argv[1]), read(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
