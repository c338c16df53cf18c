"""Replay allocation traces through PyTorch's caching allocator, for
comparison with `cargo run -p alloc-cuda --release --example gpu_alloc`.

    python alloc-cuda/examples/torch_replay.py traces/*.csv

For each CSV trace (`op,id,bytes,stream` lines, see traces/README.md)
it prints one JSON line with PyTorch's peak reserved bytes, efficiency (peak
requested / peak reserved) and num_device_alloc, read from
torch.cuda.memory_stats(); then the alloc + free latency of
torch.cuda.caching_allocator_alloc / caching_allocator_delete (cache hits) for
the sizes gpu_alloc measures. PyTorch's settings come from
PYTORCH_CUDA_ALLOC_CONF (printed as `config:`; the kit runs it with
expandable segments off and on, as gpu_alloc). Without torch or a GPU it
prints `SKIP: ...` and exits with status 3.
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "python")]

import alloc_cuda_torch  # noqa: E402

torch = None

SIZES = [4 << 10, 1 << 20, 64 << 20]


def read_trace(path):
    events = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("op,"):
                continue
            fields = [x.strip() for x in line.split(",")]
            if fields[0] == "a":
                events.append(("a", int(fields[1]), int(fields[2]), int(fields[3] or 0)))
            elif fields[0] == "f":
                events.append(("f", int(fields[1]), 0, 0))
    return events


def replay(path):
    events = read_trace(path)
    streams = {0: torch.cuda.current_stream()}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.reset_accumulated_memory_stats()
    live = {}
    ops = 0
    start = time.perf_counter()
    for op, ident, size, stream in events:
        ops += 1
        if op == "a":
            s = streams.get(stream)
            if s is None:
                s = streams[stream] = torch.cuda.Stream()
            live[ident] = torch.cuda.caching_allocator_alloc(size, stream=s)
        else:
            ptr = live.pop(ident, None)
            if ptr is not None:
                torch.cuda.caching_allocator_delete(ptr)
    elapsed = time.perf_counter() - start
    st = torch.cuda.memory_stats()
    for ptr in live.values():
        torch.cuda.caching_allocator_delete(ptr)
    peak_req = st["requested_bytes.all.peak"]
    peak_res = st["reserved_bytes.all.peak"]
    return {
        "trace": path,
        "backend": "torch",
        "ops": ops,
        "peak_requested_bytes": peak_req,
        "peak_reserved_bytes": peak_res,
        "efficiency": peak_req / peak_res if peak_res else 1.0,
        "num_device_alloc": st["num_device_alloc"],
        # cudaMalloc + cudaFree; PyTorch does not count its page maps
        "driver_calls": st["num_device_alloc"] + st["num_device_free"],
        "ns_per_op": elapsed * 1e9 / max(ops, 1),
    }


def latency(size, iters=100_000):
    ptr = torch.cuda.caching_allocator_alloc(size)
    torch.cuda.caching_allocator_delete(ptr)  # warm: cached
    start = time.perf_counter()
    for _ in range(iters):
        torch.cuda.caching_allocator_delete(torch.cuda.caching_allocator_alloc(size))
    return (time.perf_counter() - start) * 1e9 / iters


def main():
    global torch
    torch = alloc_cuda_torch.require_torch_gpu()
    print("device:", torch.cuda.get_device_name(0))
    print("config:", os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "default"))
    for path in sys.argv[1:]:
        print(json.dumps(replay(path)))
    print("bytes,torch_ns")
    for size in SIZES:
        print(f"{size},{latency(size):.1f}")


if __name__ == "__main__":
    main()
