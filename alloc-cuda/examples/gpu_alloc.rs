//! GPU benchmark (needs a CUDA device; without one it prints the error and
//! exits with status 1):
//!
//! 1. alloc + free latency, one size at a time: this allocator (a cache hit),
//!    `cuMemAlloc`/`cuMemFree`, and `cuMemAllocAsync`/`cuMemFreeAsync` on the
//!    device's default pool with its release threshold set to `u64::MAX`;
//! 2. with `--trace FILE` (repeatable; CSV traces or PyTorch snapshots), each
//!    trace replayed through a fresh allocator on the device, one JSON line
//!    per trace (peak reserved, efficiency, device allocations, driver
//!    calls, ns/op).
//!
//! The allocators are made with `ALLOC_CONF` (else `PYTORCH_CUDA_ALLOC_CONF`),
//! printed as `config:`; the kit runs it with expandable segments off and on.
//!
//! ```text
//! cargo run -p alloc-cuda --release --example gpu_alloc -- \
//!     --trace traces/bert_serving.csv
//! ```
//!
//! Compare with `examples/torch_replay.py` (PyTorch's caching allocator on
//! the same traces and sizes).

use std::process::ExitCode;
use std::time::Instant;

use alloc_core::replay;
use alloc_cuda::cudarc::driver::sys;
use alloc_cuda::{CudaAllocator, StreamHandle};

const SIZES: [usize; 3] = [4 << 10, 1 << 20, 64 << 20];

/// Iterations of the cache-hit loops: `GPU_ALLOC_ITERS` (the kit's tests on
/// the stub driver make it small), else 200,000; `cuMemAlloc` runs 1/200 of
/// them (a driver allocation costs about 100x a cache hit).
fn iters() -> u32 {
    std::env::var("GPU_ALLOC_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000u32)
        .max(200)
}

fn ns_per(iters: u32, f: impl FnMut()) -> f64 {
    let mut f = f;
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn ours(a: &CudaAllocator, bytes: usize) -> f64 {
    let s = StreamHandle::DEFAULT;
    drop(a.engine().allocate(bytes, s)); // warm: the block is cached
    ns_per(iters(), || drop(a.engine().allocate(bytes, s)))
}

fn cu_mem_alloc(bytes: usize) -> f64 {
    ns_per(iters() / 200, || {
        let mut p = 0;
        // SAFETY: `p` is an out-pointer; the context is current (bound by
        // the allocator); the allocation is freed at once, unused.
        unsafe {
            if sys::cuMemAlloc_v2(&mut p, bytes).result().is_ok() {
                let _ = sys::cuMemFree_v2(p);
            }
        }
    })
}

fn cu_mem_alloc_async(a: &CudaAllocator, bytes: usize) -> Option<f64> {
    let dev = a.context().cu_device();
    let mut pool: sys::CUmemoryPool = core::ptr::null_mut();
    // SAFETY: out-pointer; a device handle of the live context.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, dev) }
        .result()
        .ok()?;
    let mut threshold = u64::MAX;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    // SAFETY: the attribute takes a u64, which `threshold` is.
    unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut threshold as *mut u64).cast()) }
        .result()
        .ok()?;
    let stream: sys::CUstream = core::ptr::null_mut();
    let run = || {
        let mut p = 0;
        // SAFETY: out-pointer; the memory is freed on the same stream, unused.
        unsafe {
            if sys::cuMemAllocAsync(&mut p, bytes, stream).result().is_ok() {
                let _ = sys::cuMemFreeAsync(p, stream);
            }
        }
    };
    run(); // warm the pool
    let ns = ns_per(iters(), run);
    // SAFETY: the default stream of the current context.
    let _ = unsafe { sys::cuStreamSynchronize(stream) };
    Some(ns)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut traces = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--trace", Some(path)) => traces.push(path.clone()),
            _ => {
                eprintln!("usage: gpu_alloc [--trace FILE]...");
                return ExitCode::from(2);
            }
        }
    }
    let alloc = match CudaAllocator::new(0) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = alloc.context().bind_to_thread() {
        eprintln!("error: binding the context: {e:?}");
        return ExitCode::FAILURE;
    }
    let name = alloc.context().name().unwrap_or_default();
    println!("device: {name}");
    // the settings the allocators were made with (ALLOC_CONF, else
    // PYTORCH_CUDA_ALLOC_CONF: the kit sets the latter for both sides)
    let config = alloc_core::Config::env_text()
        .ok()
        .flatten()
        .map_or_else(|| "default".to_string(), |(_, text)| text);
    println!("config: {config}");
    println!(
        "expandable segments: {}",
        if alloc.uses_expandable_segments() {
            "on"
        } else {
            "off"
        }
    );
    println!("bytes,ours_ns,cuMemAlloc_ns,cuMemAllocAsync_ns,ratio_async,ratio_sync");
    for bytes in SIZES {
        let o = ours(&alloc, bytes);
        let s = cu_mem_alloc(bytes);
        let a = cu_mem_alloc_async(&alloc, bytes).unwrap_or(f64::NAN);
        println!("{bytes},{o:.1},{s:.1},{a:.1},{:.1},{:.1}", a / o, s / o);
    }
    for path in &traces {
        let loaded = match replay::load(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {path}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for trace in &loaded {
            let fresh = match CudaAllocator::new(0) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let r = replay::replay(trace, fresh.engine(), &config);
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
        }
    }
    ExitCode::SUCCESS
}
