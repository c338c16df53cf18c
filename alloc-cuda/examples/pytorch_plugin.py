"""Plug the alloc-cuda caching allocator into PyTorch and read its statistics.

Build the library first:

    cargo build -p alloc-cuda --release      # target/release/liballoc_cuda.so

then run, on a machine with a CUDA device:

    python alloc-cuda/examples/pytorch_plugin.py [path/to/liballoc_cuda.so]

Settings come from ALLOC_CONF (PyTorch's syntax), e.g.
ALLOC_CONF=expandable_segments:true. The allocator must be plugged in before
PyTorch's first CUDA allocation.
"""

import ctypes
import json
import sys

import torch

LIB = sys.argv[1] if len(sys.argv) > 1 else "target/release/liballoc_cuda.so"

# alloc(ssize_t size, int device, cudaStream_t stream) and
# free(void* ptr, ssize_t size, int device, cudaStream_t stream)
allocator = torch.cuda.memory.CUDAPluggableAllocator(
    LIB, "alloc_cuda_malloc", "alloc_cuda_free"
)
torch.cuda.memory.change_current_allocator(allocator)

# The same library, opened again: the loader returns the loaded copy, so
# these calls see the allocator PyTorch uses.
lib = ctypes.CDLL(LIB)
lib.alloc_cuda_stats_json.restype = ctypes.c_size_t
lib.alloc_cuda_stats_json.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
lib.alloc_cuda_last_error.restype = ctypes.c_size_t
lib.alloc_cuda_last_error.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
lib.alloc_cuda_empty_cache.argtypes = [ctypes.c_int]
lib.alloc_cuda_reset_peak.argtypes = [ctypes.c_int]


def stats(device=0):
    """The allocator's statistics (torch.cuda.memory_stats() keys)."""
    size = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(size)
        n = lib.alloc_cuda_stats_json(device, buf, size)
        if n == 0:
            raise RuntimeError(last_error())
        if n < size:
            return json.loads(buf.value.decode())
        size = n + 1


def last_error():
    buf = ctypes.create_string_buffer(4096)
    lib.alloc_cuda_last_error(buf, len(buf))
    return buf.value.decode()


def main():
    torch.manual_seed(0)
    x = torch.randn(4096, 4096, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = x @ x  # x is used on another stream
    # PyTorch does not forward Tensor.record_stream to a pluggable allocator:
    # synchronise before freeing memory that another stream used.
    torch.cuda.synchronize()
    z = (y.sum() / y.numel()).item()
    del x, y
    s = stats()
    print(f"mean of x @ x: {z:.4f}")
    print("allocated (peak):", s["allocated_bytes.all.peak"])
    print("reserved (peak): ", s["reserved_bytes.all.peak"])
    print("device allocations:", s["num_device_alloc"])
    lib.alloc_cuda_empty_cache(0)
    lib.alloc_cuda_reset_peak(0)
    print("reserved after empty_cache:", stats()["reserved_bytes.all.current"])


if __name__ == "__main__":
    main()
