"""alloc_cuda_torch: alloc-cuda's caching allocator inside PyTorch.

    import alloc_cuda_torch
    alloc_cuda_torch.install("liballoc_cuda_capi.so")   # before any CUDA tensor
    ...
    print(alloc_cuda_torch.memory_summary())
    stats = alloc_cuda_torch.memory_stats()             # torch.cuda.memory_stats() keys

Build the library with `cargo build -p alloc-cuda-capi --release`
(target/release/liballoc_cuda_capi.so). Settings come from ALLOC_CONF, in
PyTorch's `key:value,...` syntax.

What install() does:
- plugs the library in with torch.cuda.memory.CUDAPluggableAllocator (this
  must happen before PyTorch's first CUDA allocation);
- wires Tensor.record_stream: PyTorch does not forward it to a pluggable
  allocator, so install() wraps it to also call alloc_cuda_record_stream
  with the tensor's allocation (its storage's base pointer). Memory used on
  another stream is then reused only after that stream's work completes;
- wires torch.cuda.empty_cache(): a pluggable allocator plugged in from
  Python has no empty-cache hook, so install() wraps it to also release this
  allocator's cache of the current device (empty_cache() below);
- applies the cudnn.benchmark workaround below.

What PyTorch cannot ask a pluggable allocator:
- statistics: torch.cuda.memory_stats()/memory_summary() describe PyTorch's
  own allocator, not this one. Use memory_stats()/memory_summary() here,
  which read the plug-in's statistics (same key names);
- `cacheInfo` (the largest cached block, which cuDNN's autotuner asks for to
  size its workspace): with torch.backends.cudnn.benchmark = True a
  convolution raises ("CUDAPluggableAllocator does not yet support
  cacheInfo"). Workaround: keep cudnn.benchmark False (install() sets it and
  check_cudnn_benchmark() says so if it was turned back on); cuDNN then uses
  its heuristics instead of timing the candidates. The kit's
  pytorch_plugin.py runs a convolution with the workaround and checks the
  result against the CPU.

What PyTorch's C++ code cannot reach, and what to do instead:
- recordStream from C++: c10d (NCCL collectives) and other C++ callers call
  the allocator's recordStream directly, which for a pluggable allocator is
  a no-op; only Python's Tensor.record_stream is wired. A tensor used by a
  collective on NCCL's stream could then be reused before the collective
  completes. Set TORCH_NCCL_AVOID_RECORD_STREAMS=1 (c10d then keeps the
  tensors alive until the collective's work completes instead of recording
  streams), or keep a reference to the tensors until work.wait() returned
  and the current stream waited for the collective.
- graph pools: torch.cuda.graph / torch.cuda.make_graphed_callables and
  torch.compile(mode="reduce-overhead") capture into a private memory pool
  the plug-in does not have (the hooks exist only in C++). Memory freed
  during a capture goes back to the shared cache after it, and a replay of
  the graph would write memory other tensors now hold. Do not capture CUDA
  graphs with this plug-in: use PyTorch's own allocator for those programs.
- freeing memory: cuMemFree of a fixed segment (empty_cache(), or the
  reclaim when memory runs short, with expandable_segments:false)
  synchronises the whole device once; expandable segments (the default)
  unmap pages without waiting for any stream.

Failed allocations: PyTorch does not check the pointer a pluggable
allocator returns, so the library aborts the process with the message
(out of memory with the numbers) rather than return NULL; pass
abort_on_failure=False to get NULL back instead (only for callers that
check it).

The parts that need no torch (loading the library, parsing statistics,
formatting the summary) work without it, so they can be tested anywhere.
"""

import ctypes
import json
import os
import sys

MALLOC = "alloc_cuda_malloc"
FREE = "alloc_cuda_free"
LIB_NAME = "liballoc_cuda_capi.so"

_lib = None
_original_record_stream = None

# The exit status of a script that cannot run here (no torch, or torch
# without a GPU): the GPU kit reports the step as SKIP, not FAIL.
SKIP_EXIT = 3


def require_torch_gpu():
    """torch, imported once, when it sees a GPU; otherwise prints
    `SKIP: <why>` and exits with SKIP_EXIT."""
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install's OSError
        print(f"SKIP: torch does not import: {type(e).__name__}: {e}", flush=True)
        sys.exit(SKIP_EXIT)
    if not torch.cuda.is_available():
        print(f"SKIP: torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no GPU: "
              "torch.cuda.is_available() is False", flush=True)
        sys.exit(SKIP_EXIT)
    return torch


def find_library(path=None):
    """The library path: `path`, $ALLOC_CUDA_LIB, or target/release's."""
    for candidate in (path, os.environ.get("ALLOC_CUDA_LIB"), os.path.join("target", "release", LIB_NAME)):
        if candidate:
            return os.path.abspath(candidate)
    raise FileNotFoundError(LIB_NAME)


def load(path=None):
    """Opens the library (once) and declares its functions' C types."""
    global _lib
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(find_library(path))
    c_size_t, c_int, c_void_p, c_char_p = ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
    lib.alloc_cuda_malloc.restype = c_void_p
    lib.alloc_cuda_malloc.argtypes = [ctypes.c_ssize_t, c_int, c_void_p]
    lib.alloc_cuda_free.restype = None
    lib.alloc_cuda_free.argtypes = [c_void_p, ctypes.c_ssize_t, c_int, c_void_p]
    for name in ("alloc_cuda_stats_json", "alloc_cuda_snapshot_json"):
        f = getattr(lib, name)
        f.restype = c_size_t
        f.argtypes = [c_int, c_char_p, c_size_t]
    lib.alloc_cuda_last_error.restype = c_size_t
    lib.alloc_cuda_last_error.argtypes = [c_char_p, c_size_t]
    lib.alloc_cuda_record_stream.restype = None
    lib.alloc_cuda_record_stream.argtypes = [c_void_p, c_void_p]
    lib.alloc_cuda_empty_cache.argtypes = [c_int]
    lib.alloc_cuda_reset_peak.argtypes = [c_int]
    lib.alloc_cuda_set_abort_on_failure.argtypes = [c_int]
    _lib = lib
    return lib


def _read_text(fill, size=1 << 16):
    """Calls fill(buf, cap) -> needed length until the text fits."""
    while True:
        buf = ctypes.create_string_buffer(size)
        n = fill(buf, size)
        if n < size:
            return buf.value.decode() if n else ""
        size = n + 1


def last_error():
    """The message of the last failure of the library ('' if none)."""
    return _read_text(lambda b, n: load().alloc_cuda_last_error(b, n), 4096)


def parse_stats(text):
    """Statistics JSON from the library as a dict in PyTorch's key order."""
    if not text:
        raise RuntimeError("alloc-cuda has no statistics: " + (last_error() or "no device"))
    stats = json.loads(text)
    return dict(sorted(stats.items()))


def memory_stats(device=0):
    """The plug-in's statistics, keyed as torch.cuda.memory_stats()."""
    return parse_stats(_read_text(lambda b, n: load().alloc_cuda_stats_json(device, b, n)))


def memory_snapshot(device=0):
    """Segments and blocks of the plug-in (JSON as a dict)."""
    text = _read_text(lambda b, n: load().alloc_cuda_snapshot_json(device, b, n))
    return json.loads(text) if text else {}


def _fmt_bytes(b):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.2f} {unit}"
        b /= 1024
    return str(b)


ROWS = [
    ("Allocated memory", "allocated_bytes", True),
    ("Active memory", "active_bytes", True),
    ("Requested memory", "requested_bytes", True),
    ("Reserved memory", "reserved_bytes", True),
    ("Non-releasable memory", "inactive_split_bytes", True),
    ("Allocations", "allocation", False),
    ("Active allocs", "active", False),
    ("Segments", "segment", False),
    ("Non-releasable allocs", "inactive_split", False),
]


def format_summary(stats, device=0):
    """A table in the layout of torch.cuda.memory_summary() from `stats`."""
    line = "|" + "=" * 79 + "|"
    out = [line, f"| alloc-cuda memory summary, device {device}".ljust(80) + "|", line]
    out.append("| Metric                    | Cur Usage  | Peak Usage | Tot Alloc  | Tot Freed  |")
    out.append("|" + "-" * 79 + "|")
    for title, key, is_bytes in ROWS:
        for pool, label in (("all", title), ("large_pool", "      from large pool"), ("small_pool", "      from small pool")):
            vals = [stats.get(f"{key}.{pool}.{k}", 0) for k in ("current", "peak", "allocated", "freed")]
            cells = [(_fmt_bytes(v) if is_bytes else str(v)).rjust(10) for v in vals]
            out.append(f"| {label:<25} | " + " | ".join(cells) + " |")
        out.append("|" + "-" * 79 + "|")
    for key in ("num_alloc_retries", "num_ooms", "num_sync_all_streams", "num_device_alloc", "num_device_free"):
        out.append(f"| {key:<25} | {str(stats.get(key, 0)).rjust(10)} |".ljust(80) + "|")
    out.append(line)
    return "\n".join(out)


def memory_summary(device=0):
    """The plug-in's statistics as a torch.cuda.memory_summary()-like table."""
    return format_summary(memory_stats(device), device)


def empty_cache(device=0):
    """Releases the plug-in's cached memory of `device` (what
    torch.cuda.empty_cache() does once install() wired it)."""
    load().alloc_cuda_empty_cache(device)


def chain_empty_cache(original, current_device):
    """torch.cuda.empty_cache as install() wires it: PyTorch's own
    (`original`), then this allocator's for `current_device()`."""

    def empty_cache_both():
        original()
        empty_cache(current_device())

    empty_cache_both.alloc_cuda_wired = True
    return empty_cache_both


def reset_peak_memory_stats(device=0):
    """Sets every peak statistic of `device` to its current value."""
    load().alloc_cuda_reset_peak(device)


def allocation_pointer(tensor):
    """The allocation a tensor lives in: its storage's base pointer (a view's
    data_ptr() points inside it)."""
    return tensor.untyped_storage().data_ptr()


def record_stream(tensor, stream):
    """Marks the allocation of `tensor` as used on `stream` (a torch.cuda.Stream)."""
    load().alloc_cuda_record_stream(allocation_pointer(tensor), stream.cuda_stream)


def check_cudnn_benchmark():
    """Raises if cudnn.benchmark is on: PyTorch then asks the allocator for
    cacheInfo, which a pluggable allocator cannot answer."""
    import torch

    if torch.backends.cudnn.benchmark:
        raise RuntimeError(
            "torch.backends.cudnn.benchmark is True: PyTorch asks a pluggable allocator "
            "for cacheInfo, which it cannot answer; set it to False (cuDNN then uses its heuristics)"
        )


def install(path=None, abort_on_failure=True):
    """Plugs the library in as PyTorch's CUDA allocator (before any CUDA
    allocation), wires Tensor.record_stream and torch.cuda.empty_cache, and
    turns cudnn.benchmark off.
    Returns the ctypes library."""
    global _original_record_stream
    import torch

    lib = load(path)
    lib.alloc_cuda_set_abort_on_failure(1 if abort_on_failure else 0)
    allocator = torch.cuda.memory.CUDAPluggableAllocator(find_library(path), MALLOC, FREE)
    torch.cuda.memory.change_current_allocator(allocator)
    if _original_record_stream is None:
        _original_record_stream = torch.Tensor.record_stream

        def record_stream_and_tell_alloc_cuda(self, stream):
            _original_record_stream(self, stream)
            if self.is_cuda:
                record_stream(self, stream)

        torch.Tensor.record_stream = record_stream_and_tell_alloc_cuda
    if not getattr(torch.cuda.empty_cache, "alloc_cuda_wired", False):
        wired = chain_empty_cache(torch.cuda.empty_cache, torch.cuda.current_device)
        torch.cuda.empty_cache = wired
        torch.cuda.memory.empty_cache = wired
    torch.backends.cudnn.benchmark = False
    return lib
