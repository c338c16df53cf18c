"""PyTorch with alloc-cuda's caching allocator plugged in: checks, with
assertions, that results equal the CPU's and that the plug-in served the
allocations (its own statistics count them). Exits non-zero on any failure.

    cargo build -p alloc-cuda-capi --release   # target/release/liballoc_cuda_capi.so
    python alloc-cuda/examples/pytorch_plugin.py [path/to/liballoc_cuda_capi.so]

Needs a CUDA device and torch (without them it prints `SKIP: ...` and
exits with status 3). alloc_cuda_torch.py is looked up next to this script,
then in ../python (the repository's layout).
"""

import ctypes
import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "python")]

import alloc_cuda_torch  # noqa: E402

LIB = sys.argv[1] if len(sys.argv) > 1 else None


def check(name, ok, detail=""):
    print(f"check {name}: {'ok' if ok else 'FAILED'} {detail}".rstrip(), flush=True)
    if not ok:
        sys.exit(1)


def on_a_new_thread(torch, lib, side):
    """From a thread with no current CUDA context (as PyTorch's autograd and
    DataLoader threads may be): the C ABI directly (no torch call that could
    make a context current), then torch tensors. Returns failures."""
    failures = []

    def raw():
        p = lib.alloc_cuda_malloc(1 << 20, 0, None)
        if not p:
            failures.append("alloc_cuda_malloc from a new thread: " + alloc_cuda_torch.last_error())
            return
        lib.alloc_cuda_record_stream(ctypes.c_void_p(p), ctypes.c_void_p(side.cuda_stream))
        lib.alloc_cuda_free(ctypes.c_void_p(p), 1 << 20, 0, None)  # pending on the side stream
        q = lib.alloc_cuda_malloc(4096, 0, None)  # queries that stream's event here
        if not q:
            failures.append("second alloc_cuda_malloc from a new thread: " + alloc_cuda_torch.last_error())
            return
        lib.alloc_cuda_free(ctypes.c_void_p(q), 4096, 0, None)

    def tensors():
        try:
            x = torch.full((1 << 18,), 2.0, device="cuda")
            if x.sum().item() != float(1 << 19):
                failures.append("a tensor made on a new thread has the wrong sum")
            del x
        except Exception as e:  # reported, not raised on the thread
            failures.append(f"torch on a new thread: {e}")

    for fn in (raw, tensors):
        t = threading.Thread(target=fn)
        t.start()
        t.join(timeout=60)
        if t.is_alive():
            failures.append(f"{fn.__name__} on a new thread did not finish in 60 s")
    return failures


def main():
    torch = alloc_cuda_torch.require_torch_gpu()

    lib = alloc_cuda_torch.install(LIB)
    before = alloc_cuda_torch.memory_stats()["allocation.all.allocated"]
    torch.manual_seed(0)

    # matmul on the device against the CPU
    a = torch.randn(512, 256, dtype=torch.float64)
    b = torch.randn(256, 384, dtype=torch.float64)
    got = (a.cuda() @ b.cuda()).cpu()
    check("matmul equals the CPU", torch.allclose(got, a @ b, rtol=1e-9, atol=1e-9))

    # a convolution (cuDNN) with the cacheInfo workaround: benchmark off
    x = torch.randn(8, 3, 32, 32)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    want = conv(x)
    torch.backends.cudnn.benchmark = True
    try:
        alloc_cuda_torch.check_cudnn_benchmark()
        check("check_cudnn_benchmark refuses benchmark=True", False)
    except RuntimeError as e:
        check("check_cudnn_benchmark refuses benchmark=True", "cacheInfo" in str(e))
    try:
        conv.cuda()(x.cuda())
        torch.cuda.synchronize()
        print("check cudnn.benchmark=True with the plug-in: runs (this PyTorch asks no cacheInfo here)")
    except RuntimeError as e:
        print(f"check cudnn.benchmark=True with the plug-in: raises: {str(e).splitlines()[0]}")
    torch.backends.cudnn.benchmark = False
    got = conv.cuda()(x.cuda()).cpu()
    check("conv2d (benchmark off) equals the CPU", torch.allclose(got, want, rtol=1e-4, atol=1e-4))

    # another stream: x used there, recorded, freed, the result still right
    x = torch.randn(2048, 2048, device="cuda")
    want = (x.cpu() @ x.cpu()).sum().item()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = x @ x
    x.record_stream(side)  # forwarded to the plug-in by install()
    y.record_stream(side)
    del x
    z = torch.empty(2048, 2048, device="cuda").fill_(1.0)  # may not take x's block early
    torch.cuda.current_stream().wait_stream(side)
    got = y.sum().item()
    check("cross-stream result equals the CPU", abs(got - want) <= 1e-3 * max(1.0, abs(want)), f"{got} vs {want}")
    check("fill after a cross-stream free", bool((z == 1.0).all().item()))
    del y, z

    # the plug-in served these allocations
    stats = alloc_cuda_torch.memory_stats()
    served = stats["allocation.all.allocated"] - before
    check("the plug-in served the allocations", served >= 6, f"({served} allocations)")
    live = torch.empty(1 << 20, device="cuda")
    segments = alloc_cuda_torch.memory_snapshot().get("segments", [])
    ptr = live.data_ptr()
    inside = any(s["address"] <= ptr < s["address"] + s["total_size"] for s in segments if "address" in s)
    check("a tensor lies in a plug-in segment", inside, f"(ptr {ptr:#x}, {len(segments)} segments)")
    del live
    torch.cuda.synchronize()
    # a thread with no current context allocates, frees on another stream and
    # reuses (the event query binds the context)
    side2 = torch.cuda.Stream()
    failures = on_a_new_thread(torch, lib, side2)
    check("allocating and freeing from a thread with no current context", not failures, "; ".join(failures))
    torch.cuda.synchronize()
    # torch.cuda.empty_cache() reaches the plug-in (install() wired it)
    reserved = alloc_cuda_torch.memory_stats()["reserved_bytes.all.current"]
    torch.cuda.empty_cache()
    after = alloc_cuda_torch.memory_stats()["reserved_bytes.all.current"]
    check("torch.cuda.empty_cache() releases the plug-in's cache", after < reserved or reserved == 0,
          f"({reserved} -> {after} B)")
    check("nothing pending after a synchronised empty_cache",
          alloc_cuda_torch.memory_stats()["active_bytes.all.current"]
          == alloc_cuda_torch.memory_stats()["allocated_bytes.all.current"])
    stats = alloc_cuda_torch.memory_stats()
    print(f"stats allocations {stats['allocation.all.allocated']}, peak allocated "
          f"{stats['allocated_bytes.all.peak']} B, peak reserved {stats['reserved_bytes.all.peak']} B, "
          f"device allocations {stats['num_device_alloc']}")
    print(alloc_cuda_torch.memory_summary())


if __name__ == "__main__":
    main()
