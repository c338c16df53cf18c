#!/usr/bin/env python3
"""Whole-process comparison of global allocators, timed side by side.

Builds nothing: run `cargo build --release -p alloc-benches --bins` first.
Each round calls hyperfine once over every variant (so variants alternate
within minutes of each other on a noisy machine); the report gives, per thread
count, the median over all runs of every variant and its ratio to bare
mimalloc (and stats_alloc's to the system allocator it wraps).

Usage: benches/whole_process.py [--rounds N] [--runs-per-round N] [--threads 1,2]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

VARIANTS = [
    ("system", "System (glibc malloc)"),
    ("mimalloc", "bare mimalloc"),
    ("tracking_off", "alloc-host, tracking off"),
    ("tracking_root", "alloc-host, on, no scope"),
    ("tracking_scope", "alloc-host, scope entered on every thread"),
    ("stats_alloc", "stats_alloc over System"),
    ("tracking_allocator", "tracking-allocator over mimalloc, group per thread"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs-per-round", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--target", default=os.path.join(os.path.dirname(__file__), "..", "target", "release"))
    args = ap.parse_args()
    if not shutil.which("hyperfine"):
        sys.exit("hyperfine not found: apt-get install hyperfine")
    for threads in [int(t) for t in args.threads.split(",")]:
        times = {v: [] for v, _ in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else list(reversed(VARIANTS))
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = ["hyperfine", "-N", "--style", "none", "--warmup", "1",
                       "--runs", str(args.runs_per_round), "--export-json", out.name]
                for v, _ in order:
                    exe = os.path.join(args.target, "wp_" + v)
                    cmd += ["-n", v, f"{exe} {threads}"]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                for res in json.load(open(out.name))["results"]:
                    times[res["command"]] += res["times"]
        base = statistics.median(times["mimalloc"])
        system = statistics.median(times["system"])
        print(f"\n### {threads} thread{'s' if threads > 1 else ''}: "
              f"{args.rounds} rounds x {args.runs_per_round} runs per variant\n")
        print("| variant | median s | min s | max s | ratio to bare mimalloc |")
        print("|---|---:|---:|---:|---:|")
        for v, label in VARIANTS:
            t = times[v]
            med = statistics.median(t)
            extra = f" ({med / system:.3f}x System)" if v == "stats_alloc" else ""
            print(f"| {label} | {med:.3f} | {min(t):.3f} | {max(t):.3f} | {med / base:.3f}{extra} |")


if __name__ == "__main__":
    main()
