//! An inference server, simulated: load a model (host weights and device
//! weights), serve variable-size requests on a pool of worker threads, and
//! report every request's host and device peaks, the device summary, the
//! efficiency and what `cleanup_all` released.
//!
//! `cargo run --release -p alloc-toolkit --example inference_server`
//!
//! Device memory comes from CUDA device 0 through alloc-cuda's
//! `CudaAllocator` where a GPU is present (feature `cuda`, on by default), from
//! the caching engine over host memory (`CachingAllocator<HostBackend>`)
//! otherwise; the first line printed says which, and why. Either engine is
//! capped at `DEVICE_CAP` so that the cap is felt: batches are sized by `AdaptiveBatch` against a device budget, and an
//! allocation that still runs out of memory goes through `retry_on_oom`, with a
//! CPU fallback. Every request is a scope: its host allocations (through the
//! tracking global allocator) and its device buffers (allocated while its scope
//! is entered) are charged to it. Loading the model runs in a `tracing` span,
//! which the toolkit's `ScopeLayer` turns into a scope.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, Config, DeviceBackend, DeviceBuffer, HostBackend};
use alloc_host::{ScopeBuilder, ScopeHandle, TrackingAllocator, format_bytes as b};
use alloc_toolkit::{
    AdaptiveBatch, BatchLimits, BufferPool, DEFAULT_SAFETY_FACTOR, MemoryMonitor, Metric,
    MonitorConfig, Pooled, RetryPolicy, ScopeLayer, cleanup_all, ensure_available,
    ensure_device_available, plot_svg, register_device, render_report, retry_on_oom_or,
};
use tracing_subscriber::prelude::*;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

const WORKERS: usize = 4;
const REQUESTS: usize = 240;
const HIDDEN: usize = 1024; // model width: f32 activations per token
const LAYERS: usize = 8;
/// Device bytes of KV cache per token: K and V, fp16, every layer.
const KV_PER_TOKEN: usize = 2 * 2 * HIDDEN * LAYERS;
const HOST_WEIGHTS: usize = 64 << 20;
const DEVICE_WEIGHTS: usize = 128 << 20;
const DEVICE_CAP: usize = 640 << 20; // the engine's cap on reserved bytes
/// Device bytes one batch may peak at: the cap less the weights, shared by
/// the workers.
const BATCH_DEVICE_BUDGET: u64 = ((DEVICE_CAP - DEVICE_WEIGHTS) / WORKERS) as u64;

/// A backend the server runs on: what it can do with a buffer's memory.
trait Memory: DeviceBackend + Sized {
    /// Writes `byte` over `buf` where the host can reach its memory.
    fn fill(buf: &DeviceBuffer<'_, Self>, byte: u8);
}

impl Memory for HostBackend {
    fn fill(buf: &DeviceBuffer<'_, Self>, byte: u8) {
        // SAFETY: the buffer is a live block of `capacity()` bytes of host
        // memory (HostBackend segments are read-write anonymous mappings)
        // that this thread owns until the buffer drops.
        unsafe { std::ptr::write_bytes(buf.ptr().addr() as *mut u8, byte, buf.capacity()) };
    }
}

#[cfg(feature = "cuda")]
impl Memory for alloc_cuda::CudaBackend {
    /// Device memory: never written through on the host; the simulated
    /// kernels only hold it.
    fn fill(_buf: &DeviceBuffer<'_, Self>, _byte: u8) {}
}

struct Request {
    id: usize,
    tokens: usize,
}

struct Served {
    id: usize,
    tokens: usize,
    batch: usize,
    host_peak: u64,
    device_peak: u64,
    attempts: u32,
    cpu_fallback: bool,
    checksum: f32,
}

/// Request sizes from a fixed linear congruential generator: mostly short
/// prompts, a long tail up to 2,048 tokens.
fn requests() -> VecDeque<Request> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..REQUESTS)
        .map(|id| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (x >> 33) as f64 / (1u64 << 31) as f64;
            let tokens = (32.0 + 2016.0 * u.powi(3)) as usize;
            Request { id, tokens }
        })
        .collect()
}

/// What a request holds while its batch runs.
struct InFlight<'a, B: Memory> {
    scope: ScopeHandle,
    tokens: Vec<u32>,
    act: Pooled<f32>,
    kv: Option<DeviceBuffer<'a, B>>,
    attempts: u32,
}

/// Admits a request to the batch: tokenize it, take host activations from the
/// pool and a device KV cache (retrying on out of memory; a host KV cache,
/// the CPU path, when the device stays full). Runs in the request's scope.
fn admit<'a, B: Memory>(
    req: &Request,
    device: &'a CachingAllocator<B>,
    stream: B::Stream,
    pool: &BufferPool<f32>,
) -> InFlight<'a, B> {
    let scope = ScopeBuilder::new(&format!("request {}", req.id))
        .build()
        .expect("scope");
    let _in = scope.enter();
    let tokens: Vec<u32> = (0..req.tokens as u32)
        .map(|t| t.wrapping_mul(2654435761) % 50_000)
        .collect();
    let act = pool.take(req.tokens * HIDDEN);
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(2),
        ..RetryPolicy::default()
    };
    let (kv, attempts) = retry_on_oom_or(
        |_| device.allocate(req.tokens * KV_PER_TOKEN, stream).map(Some),
        |_| Ok(None),
        &policy,
    )
    .unwrap_or_else(|e| panic!("request {}: {e}", req.id));
    drop(_in);
    InFlight {
        scope,
        tokens,
        act,
        kv,
        attempts: attempts.attempts,
    }
}

/// One forward pass over an admitted request, in its scope.
fn forward<B: Memory>(
    f: &mut InFlight<'_, B>,
    device: &CachingAllocator<B>,
    stream: B::Stream,
    weights: &[f32],
) -> (f32, bool) {
    let _in = f.scope.enter();
    let n = f.tokens.len();
    f.act.extend(
        (0..n * HIDDEN).map(|i| weights[(i + f.tokens[i / HIDDEN] as usize) % weights.len()]),
    );
    let cpu = match &f.kv {
        Some(buf) => {
            B::fill(buf, (n % 251) as u8);
            false
        }
        None => {
            drop(vec![1u8; n * KV_PER_TOKEN]); // the CPU path's KV cache
            true
        }
    };
    let logits = device.allocate(n * 4 * 512, stream).ok();
    let reply: String = f.tokens.iter().take(64).map(|t| format!("{t} ")).collect();
    drop(logits);
    (
        f.act.iter().step_by(HIDDEN).sum::<f32>() + reply.len() as f32,
        cpu,
    )
}

#[allow(clippy::too_many_arguments)]
fn worker<B: Memory>(
    queue: &Mutex<VecDeque<Request>>,
    batcher: &Mutex<AdaptiveBatch>,
    device: &CachingAllocator<B>,
    stream: B::Stream,
    pool: &BufferPool<f32>,
    weights: &[f32],
    out: &Mutex<Vec<Served>>,
    batches: &Mutex<Vec<usize>>,
) {
    loop {
        let budget_tokens = batcher.lock().unwrap().size();
        let batch: Vec<Request> = {
            let mut q = queue.lock().unwrap();
            let mut taken = Vec::new();
            let mut tokens = 0;
            while let Some(r) = q.front() {
                if !taken.is_empty() && tokens + r.tokens > budget_tokens {
                    break;
                }
                tokens += r.tokens;
                taken.extend(q.pop_front());
            }
            taken
        };
        if batch.is_empty() {
            return;
        }
        let batch_no = {
            let mut b = batches.lock().unwrap();
            b.push(budget_tokens);
            b.len()
        };
        // The batch is a scope; each request a scope inside it. Every request
        // of the batch holds its memory until the batch is done.
        let batch_scope = ScopeBuilder::new(&format!("batch {batch_no}"))
            .enter()
            .expect("scope");
        let mut flights: Vec<InFlight<'_, B>> = batch
            .iter()
            .map(|r| admit(r, device, stream, pool))
            .collect();
        let results: Vec<(f32, bool)> = flights
            .iter_mut()
            .map(|f| forward(f, device, stream, weights))
            .collect();
        let mut served = Vec::with_capacity(batch.len());
        for ((req, f), (checksum, cpu_fallback)) in batch.iter().zip(flights).zip(results) {
            let scope = f.scope.clone();
            let attempts = f.attempts;
            drop(f);
            let s = scope.stats();
            served.push(Served {
                id: req.id,
                tokens: req.tokens,
                batch: batch_no,
                host_peak: s.peak_bytes,
                device_peak: s.device.peak_bytes,
                attempts,
                cpu_fallback,
                checksum,
            });
        }
        let s = batch_scope.stats();
        drop(batch_scope);
        let fallbacks = served.iter().filter(|r| r.cpu_fallback).count();
        let tokens: usize = batch.iter().map(|r| r.tokens).sum();
        let mut ab = batcher.lock().unwrap();
        if fallbacks > 0 {
            ab.on_oom();
        } else {
            ab.record(tokens, s.peak_bytes, s.device.peak_bytes);
        }
        drop(ab);
        out.lock().unwrap().extend(served);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let config = Config {
        max_reserved_bytes: Some(DEVICE_CAP),
        ..Config::default()
    };
    #[cfg(feature = "cuda")]
    let why = match alloc_cuda::CudaAllocator::with_config(0, config.clone()) {
        Ok(gpu) => return serve_cuda(gpu, started),
        Err(e) => e.to_string(),
    };
    #[cfg(not(feature = "cuda"))]
    let why = "built without the `cuda` feature".to_owned();
    println!("device: host memory ({why})");
    let device = Arc::new(CachingAllocator::new(HostBackend::new(), config));
    register_device("device0", device.clone());
    serve(&device, (), started)
}

/// Serves on CUDA device 0, on one stream shared by the workers; a pinned
/// host pool is registered so that `cleanup_all` releases it too.
#[cfg(feature = "cuda")]
fn serve_cuda(
    gpu: alloc_cuda::CudaAllocator,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Arc::new(gpu);
    println!(
        "device: CUDA device {} (alloc-cuda, capped at {})",
        gpu.ordinal(),
        b(DEVICE_CAP as u64)
    );
    let stream = gpu.new_stream()?;
    register_device("device0", gpu.clone());
    alloc_toolkit::register_pinned_pool("pinned0", Arc::new(alloc_cuda::PinnedPool::new(0)?));
    serve(gpu.engine(), alloc_cuda::StreamHandle::of(&stream), started)
}

/// Loads the model on `device`, serves every request, prints the reports.
fn serve<B: Memory>(
    device: &CachingAllocator<B>,
    stream: B::Stream,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let over = Arc::new(Mutex::new(Vec::new()));
    let seen = over.clone();
    let monitor = MemoryMonitor::new(MonitorConfig {
        interval: Duration::from_millis(10),
        capacity: 3000,
    })?
    .on_threshold(
        Metric::DeviceReserved,
        (DEVICE_CAP as u64) * 8 / 10,
        move |e| {
            seen.lock().unwrap().push(e.sample.t);
        },
    )?
    .start()?;

    // Load the model, checking first that it fits.
    ensure_available(HOST_WEIGHTS as u64, DEFAULT_SAFETY_FACTOR)?;
    ensure_device_available("device0", DEVICE_WEIGHTS as u64, DEFAULT_SAFETY_FACTOR)?;
    // Code instrumented with `tracing` gets a scope per span: with the
    // `ScopeLayer` installed, the span `load-model` is the scope that the
    // weights are charged to.
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(ScopeLayer::new()),
    )?;
    let load = tracing::info_span!("load-model");
    let _in = load.enter();
    let weights: Vec<f32> = (0..HOST_WEIGHTS / 4)
        .map(|i| (i % 97) as f32 * 1e-3)
        .collect();
    let device_weights = device.allocate(DEVICE_WEIGHTS, stream)?;
    B::fill(&device_weights, 1);
    let l = ScopeHandle::current().stats();
    drop(_in);
    println!(
        "model loaded: {} host weights, {} device weights (scope `load-model`: host peak {}, device peak {})",
        b(HOST_WEIGHTS as u64),
        b(DEVICE_WEIGHTS as u64),
        b(l.peak_bytes),
        b(l.device.peak_bytes)
    );

    // Serve.
    let queue = Mutex::new(requests());
    let batcher = Mutex::new(AdaptiveBatch::new(
        512,
        BatchLimits {
            host_budget: None,
            device_budget: Some(BATCH_DEVICE_BUDGET),
            target: 0.9,
            min: 32,
            max: 16_384,
            max_growth: 2.0,
        },
    )?);
    let pool = BufferPool::<f32>::new("activations", 256 << 20)?;
    let out = Mutex::new(Vec::with_capacity(REQUESTS));
    let batches = Mutex::new(Vec::new());
    let serve_start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                worker(
                    &queue, &batcher, device, stream, &pool, &weights, &out, &batches,
                )
            });
        }
    });
    let serve_time = serve_start.elapsed();
    let mut served = out.into_inner().unwrap();
    served.sort_by_key(|r| r.id);
    let summary = monitor.stop();
    print_requests(&served, serve_time);

    let batcher = batcher.into_inner().unwrap();
    let sizes = batches.into_inner().unwrap();
    let fit = batcher.estimator().device();
    println!(
        "\nadaptive batching: {} batches; token budget {} -> {} (max {}); {} OOM halvings; learned device bytes/token {}",
        sizes.len(),
        sizes.first().copied().unwrap_or(0),
        batcher.size(),
        sizes.iter().max().copied().unwrap_or(0),
        batcher.ooms(),
        fit.map_or_else(
            || "-".into(),
            |f| format!("{:.0} (KV cache alone: {KV_PER_TOKEN})", f.per_item)
        ),
    );
    let ps = pool.stats();
    println!(
        "activation pool: {} hits, {} misses, efficiency {:.2}, {} pooled",
        ps.hits,
        ps.misses,
        ps.efficiency,
        b(ps.pooled_bytes)
    );
    println!(
        "monitor: {} samples, max tracked host {}, max device reserved {}, {} time(s) above 80% of the device",
        summary.samples,
        b(summary.max.host_live),
        b(summary.max.device_reserved),
        over.lock().unwrap().len()
    );

    println!("\ndevice summary (device0):\n{}", device.memory_summary());
    println!(
        "device efficiency (peak requested / peak reserved): {:.3}",
        device.stats().efficiency()
    );

    drop(device_weights);
    drop(weights);
    let released = cleanup_all();
    println!("\ncleanup_all released:\n{released}");
    println!("\n{}", render_report(&alloc_toolkit::memory_info(), None));

    let svg = std::env::temp_dir().join("inference_server_memory.svg");
    std::fs::write(
        &svg,
        plot_svg(&summary.series, "inference_server: memory over time"),
    )?;
    let prom = std::env::temp_dir().join("inference_server_metrics.prom");
    std::fs::write(&prom, alloc_toolkit::prometheus())?;
    println!(
        "plot: {}\nmetrics: {}\ntotal time {:.2} s",
        svg.display(),
        prom.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_requests(served: &[Served], time: Duration) {
    println!(
        "\nserved {} requests on {WORKERS} workers in {:.2} s\n",
        served.len(),
        time.as_secs_f64()
    );
    println!(
        "{:>7} {:>6} {:>5} {:>11} {:>11} {:>8} {:>9}",
        "request", "tokens", "batch", "host peak", "device peak", "attempts", "path"
    );
    let show = |r: &Served| {
        println!(
            "{:>7} {:>6} {:>5} {:>11} {:>11} {:>8} {:>9}",
            r.id,
            r.tokens,
            r.batch,
            b(r.host_peak),
            b(r.device_peak),
            r.attempts,
            if r.cpu_fallback { "cpu" } else { "device" }
        );
    };
    for r in served.iter().take(12) {
        show(r);
    }
    println!(
        "    ... ({} more; the 5 largest by device peak:)",
        served.len().saturating_sub(12)
    );
    let mut by_dev: Vec<&Served> = served.iter().collect();
    by_dev.sort_by_key(|r| std::cmp::Reverse(r.device_peak));
    for r in by_dev.iter().take(5) {
        show(r);
    }
    let mut hp: Vec<u64> = served.iter().map(|r| r.host_peak).collect();
    let mut dp: Vec<u64> = served.iter().map(|r| r.device_peak).collect();
    hp.sort_unstable();
    dp.sort_unstable();
    let q = |v: &[u64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
    println!(
        "\nper-request peaks   min / median / p99 / max\n  host:   {} / {} / {} / {}\n  device: {} / {} / {} / {}",
        b(hp[0]),
        b(q(&hp, 0.5)),
        b(q(&hp, 0.99)),
        b(hp[hp.len() - 1]),
        b(dp[0]),
        b(q(&dp, 0.5)),
        b(q(&dp, 0.99)),
        b(dp[dp.len() - 1]),
    );
    let retried = served.iter().filter(|r| r.attempts > 1).count();
    let cpu = served.iter().filter(|r| r.cpu_fallback).count();
    let check: f32 = served.iter().map(|r| r.checksum).sum();
    println!(
        "  {retried} request(s) retried after OOM, {cpu} served on the CPU path (checksum {check:.1})"
    );
}
