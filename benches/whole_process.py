#!/usr/bin/env python3
"""Whole-process comparison of global allocators, timed side by side.

Builds nothing: run `cargo build --release -p alloc-benches --bins` first.
Runs are interleaved one by one (round-robin over the variants, the order
reversed every other round), so slow phases of a noisy machine hit every
variant alike. Each run is timed for wall clock and for CPU time (user + sys,
from wait4), and the report gives medians and their ratios to bare mimalloc
(stats_alloc's also to the system allocator it wraps).

Usage: benches/whole_process.py [--rounds N] [--threads 1,2]
"""
import argparse
import os
import statistics
import subprocess
import time

VARIANTS = [
    ("system", "System (glibc malloc)"),
    ("mimalloc", "bare mimalloc (`mimalloc` crate)"),
    ("tracking_off", "alloc-host, tracking off"),
    ("tracking_root", "alloc-host, on, no scope"),
    ("tracking_scope", "alloc-host, scope entered on every thread"),
    ("stats_alloc", "stats_alloc over System"),
    ("tracking_allocator", "tracking-allocator over mimalloc, group per thread"),
]


def run_once(exe, threads):
    start = time.perf_counter()
    p = subprocess.Popen([exe, str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{exe} {threads} failed with status {status}")
    return wall, ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--target", default=os.path.join(os.path.dirname(__file__), "..", "target", "release"))
    args = ap.parse_args()
    for threads in [int(t) for t in args.threads.split(",")]:
        wall = {v: [] for v, _ in VARIANTS}
        cpu = {v: [] for v, _ in VARIANTS}
        for v, _ in VARIANTS:  # warm-up: page cache, binaries
            run_once(os.path.join(args.target, "wp_" + v), threads)
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else list(reversed(VARIANTS))
            for v, _ in order:
                w, c = run_once(os.path.join(args.target, "wp_" + v), threads)
                wall[v].append(w)
                cpu[v].append(c)
        bw, bc = statistics.median(wall["mimalloc"]), statistics.median(cpu["mimalloc"])
        sw, sc = statistics.median(wall["system"]), statistics.median(cpu["system"])
        print(f"\n### {threads} thread{'s' if threads > 1 else ''}: {args.rounds} interleaved runs per variant\n")
        print("| variant | wall median s | wall ratio to bare mimalloc | CPU median s | CPU ratio to bare mimalloc |")
        print("|---|---:|---:|---:|---:|")
        for v, label in VARIANTS:
            w, c = statistics.median(wall[v]), statistics.median(cpu[v])
            extra_w = f" ({w / sw:.3f}x System)" if v == "stats_alloc" else ""
            extra_c = f" ({c / sc:.3f}x System)" if v == "stats_alloc" else ""
            print(f"| {label} | {w:.3f} | {w / bw:.3f}{extra_w} | {c:.3f} | {c / bc:.3f}{extra_c} |")


if __name__ == "__main__":
    main()
