#!/usr/bin/env python3
"""Whole-process comparison of global allocators, timed side by side.

Builds nothing: run `cargo build --release -p alloc-benches --bins` first
(pass `--target $CARGO_TARGET_DIR/release` when the build went elsewhere; the
default is $CARGO_TARGET_DIR/release, else ../target/release).
Every binary `wp_VARIANT THREADS WORKLOAD` runs one workload (see
benches/src/workload.rs: mixed, pow2, parse, hold, hold-class=SIZE, scopes,
scopes-leave-one).
Runs are interleaved one by one (round-robin over the variants, the order
reversed every other round), so slow phases of a noisy machine hit every
variant alike. Each run is timed for wall clock and for CPU time (user + sys,
from wait4) and its peak RSS (ru_maxrss) is kept; the report gives medians and
their ratios to bare mimalloc (stats_alloc's also to the system allocator it
wraps), and the medians of any `metric NAME VALUE` lines the binaries print.

`--classes` adds the memory overhead per size class: `hold-class=SIZE` (blocks
of exactly SIZE bytes, all live) under each of `--class-variants`, reporting
resident bytes per block (measured in-process) and the ratio to bare mimalloc.

Usage: benches/whole_process.py [--rounds N] [--threads 1,2]
         [--workload mixed,pow2,parse,hold,scopes] [--rounds-for parse=5,hold=5]
         [--variants a,b] [--classes 8,16,...] [--class-variants mimalloc,tracking_scope]
"""
import argparse
import os
import statistics
import subprocess
import time

VARIANTS = [
    ("system", "System (glibc malloc)"),
    ("mimalloc", "bare mimalloc (`mimalloc` crate)"),
    ("mimalloc_plain", "mimalloc, plain entry points (`alloc_host::Mimalloc`)"),
    ("tracking_off", "alloc-host, tracking switched off at run time"),
    ("tracking_start_off", "alloc-host built with starting_off, tracking never on"),
    ("tracking_root", "alloc-host, on, no scope"),
    ("tracking_scope", "alloc-host, scope entered on every thread"),
    ("stats_alloc", "stats_alloc over System"),
    ("tracking_allocator", "tracking-allocator over mimalloc, group per thread (and per request)"),
]
LABEL = dict(VARIANTS)


def run_once(exe, threads, workload):
    start = time.perf_counter()
    p = subprocess.Popen([exe, str(threads), workload], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{exe} {threads} {workload} failed with status {status}")
    metrics = {}
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "metric":
            metrics[parts[1]] = float(parts[2])
    # ru_maxrss is in KiB on Linux.
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, metrics


def interleaved(target, variants, threads, workload, rounds, warmup=True):
    """Returns {variant: [(wall, cpu, maxrss, metrics), ...]}."""
    res = {v: [] for v in variants}
    if warmup:
        for v in variants:  # page cache, binaries
            run_once(os.path.join(target, "wp_" + v), threads, workload)
    for r in range(rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for v in order:
            res[v].append(run_once(os.path.join(target, "wp_" + v), threads, workload))
    return res


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def ratio(a, b):
    return a / b if b else float("nan")


def report(res, variants, threads, workload, rounds):
    col = lambda v, i: [x[i] for x in res[v]]
    base = "mimalloc" if "mimalloc" in variants else variants[0]
    bw, bc, br = (med(col(base, i)) for i in range(3))
    sysv = "system" in variants
    sw, sc, sr = (med(col("system", i)) for i in range(3)) if sysv else (0, 0, 0)
    print(f"\n#### {workload}, {threads} thread{'s' if threads > 1 else ''}: "
          f"{rounds} interleaved runs per variant\n")
    print(f"| variant | wall median s | wall ratio to {base} | CPU median s | CPU ratio | "
          f"max RSS median MiB | RSS ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        w, c, m = med(col(v, 0)), med(col(v, 1)), med(col(v, 2))
        ew = f" ({ratio(w, sw):.3f}x System)" if v == "stats_alloc" and sysv else ""
        ec = f" ({ratio(c, sc):.3f}x System)" if v == "stats_alloc" and sysv else ""
        er = f" ({ratio(m, sr):.3f}x System)" if v == "stats_alloc" and sysv else ""
        print(f"| {LABEL.get(v, v)} | {w:.3f} | {ratio(w, bw):.3f}{ew} | {c:.3f} | "
              f"{ratio(c, bc):.3f}{ec} | {m / 2**20:.1f} | {ratio(m, br):.3f}{er} |")
    names = sorted({k for v in variants for x in res[v] for k in x[3]})
    if names:
        print(f"\nMetrics printed by the binaries (medians):\n")
        print("| variant | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for v in variants:
            cells = []
            for n in names:
                xs = [x[3][n] for x in res[v] if n in x[3]]
                cells.append(f"{med(xs):.4g}" if xs else "")
            print(f"| {LABEL.get(v, v)} | " + " | ".join(cells) + " |")


def classes(target, variants, sizes, rounds):
    base = "mimalloc" if "mimalloc" in variants else variants[0]
    per = {}
    for size in sizes:
        res = interleaved(target, variants, 1, f"hold-class={size}", rounds, warmup=False)
        per[size] = {v: (med([x[3]["rss_per_block_B"] for x in res[v]]),
                         int(res[v][0][3].get("blocks", 0))) for v in variants}
    print(f"\n#### Memory per block by size class: {rounds} interleaved runs per variant "
          f"(resident growth per live block, medians)\n")
    print("| size B | blocks | " + " | ".join(f"{v} B/block" for v in variants) + " | "
          + " | ".join(f"{v} / {base}" for v in variants if v != base) + " |")
    print("|---:|---:|" + "---:|" * (2 * len(variants) - 1))
    for size in sizes:
        row = per[size]
        cells = [f"{row[v][0]:.1f}" for v in variants]
        rats = [f"{ratio(row[v][0], row[base][0]):.3f}" for v in variants if v != base]
        print(f"| {size} | {row[base][1]} | " + " | ".join(cells) + " | " + " | ".join(rats) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--rounds-for", default="", help="per-workload rounds, e.g. parse=5,hold=5")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--workload", default="mixed", help="comma-separated workloads")
    ap.add_argument("--variants", default=",".join(v for v, _ in VARIANTS))
    ap.add_argument("--classes", default="", help="sizes for the per-size-class table, e.g. 8,16,24")
    ap.add_argument("--class-variants", default="mimalloc,tracking_off,tracking_scope")
    ap.add_argument("--class-rounds", type=int, default=3)
    default_target = os.path.join(os.environ["CARGO_TARGET_DIR"], "release") \
        if os.environ.get("CARGO_TARGET_DIR") \
        else os.path.join(os.path.dirname(__file__), "..", "target", "release")
    ap.add_argument("--target", default=default_target)
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    rounds_for = dict((k, int(n)) for k, n in (x.split("=") for x in args.rounds_for.split(",") if x))
    workloads = [w for w in args.workload.split(",") if w]
    for workload in workloads:
        rounds = rounds_for.get(workload, args.rounds)
        for threads in [int(t) for t in args.threads.split(",")]:
            start = time.perf_counter()
            res = interleaved(args.target, variants, threads, workload, rounds)
            report(res, variants, threads, workload, rounds)
            print(f"\n({time.perf_counter() - start:.0f} s)", flush=True)
    if args.classes:
        classes(args.target, [v for v in args.class_variants.split(",") if v],
                [int(s) for s in args.classes.split(",")], args.class_rounds)


if __name__ == "__main__":
    main()
