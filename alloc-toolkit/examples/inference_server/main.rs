//! An inference server on the toolkit: axum/tokio on 127.0.0.1, a small real
//! model (random weights, real matrix work with ndarray), every request a
//! scope that follows its task across `.await` points and worker threads
//! (`in_scope`, `bind`), charged for host and device memory; `/metrics`
//! (Prometheus) and `/debug/memory` (the dashboard page, and its JSON).
//!
//! `cargo run --release -p alloc-toolkit --example inference_server`
//!   starts the server, sends it a few hundred concurrent requests of varied
//!   sizes over real HTTP from a built-in load generator (scraping `/metrics`
//!   and `/debug/memory` while it runs), prints latency and throughput next to
//!   per-request memory, and exits.
//! `... --example inference_server -- --serve [--port 3000]` keeps it running
//!   for a person (loopback only; Ctrl-C stops it).
//! `... -- --requests 300 --concurrency 32` sizes the load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, Config, DeviceBackend, DeviceBuffer, HostBackend};
use alloc_host::{Instrument, ScopeBuilder, TrackingAllocator, format_bytes as b};
use alloc_toolkit::{
    DashboardData, DeviceFigure, Level, MemoryMonitor, MonitorConfig, MonitorGuard, RetryPolicy,
    ScopeLayer, Threshold, cleanup_all, metrics::CONTENT_TYPE, recommendations, register_device,
    render_html, retry_on_oom_async,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use tracing_subscriber::prelude::*;

mod load;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

const VOCAB: usize = 4096;
const D: usize = 128; // model width
const HIDDEN: usize = 512; // feed-forward width
const LAYERS: usize = 2;
/// Device bytes of KV cache per token: K and V, f32, every layer.
const KV_PER_TOKEN: usize = 2 * 4 * D * LAYERS;
const DEVICE_CAP: usize = 256 << 20; // the engine's cap on reserved bytes

/// A backend the server can hold buffers on: can the host write them?
pub trait Memory: DeviceBackend + Sized + 'static {
    /// Copies `data` into `buf` from float `at` on, where the host can
    /// reach its memory and it fits; returns whether it did.
    fn store(buf: &DeviceBuffer<'_, Self>, at: usize, data: &[f32]) -> bool;
}

impl Memory for HostBackend {
    fn store(buf: &DeviceBuffer<'_, Self>, at: usize, data: &[f32]) -> bool {
        if at.saturating_add(data.len()) > buf.capacity() / 4 {
            return false;
        }
        // SAFETY: the buffer is a live block of `capacity()` bytes of host
        // memory (HostBackend segments are read-write anonymous mappings,
        // aligned far beyond 4 bytes) that this task owns until it drops;
        // floats `at..at + len` lie inside it (checked above).
        unsafe {
            let dst = (buf.ptr().addr() as *mut f32).add(at);
            std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len());
        }
        true
    }
}

#[cfg(feature = "cuda")]
impl Memory for alloc_cuda::CudaBackend {
    /// Device memory: the kernels run on the CPU; the buffer is held, not
    /// written.
    fn store(_buf: &DeviceBuffer<'_, Self>, _at: usize, _data: &[f32]) -> bool {
        false
    }
}

/// A decoder-shaped model with random weights: an embedding table, `LAYERS`
/// residual feed-forward blocks, and an output projection.
struct Model {
    emb: Array2<f32>,
    layers: Vec<(Array2<f32>, Array2<f32>)>,
    out: Array2<f32>,
}

/// Deterministic weights in [-scale, scale) from a linear congruential
/// generator.
fn weights(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let scale = 1.0 / (rows as f32).sqrt();
    Array2::from_shape_simple_fn((rows, cols), || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    })
}

impl Model {
    /// Loads the weights inside a `load_model` span, which `ScopeLayer`
    /// makes a scope (its host memory is charged there).
    fn load() -> Model {
        let span = tracing::info_span!("load_model");
        let _in = span.enter();
        Model {
            emb: weights(VOCAB, D, 1),
            layers: (0..LAYERS as u64)
                .map(|l| (weights(D, HIDDEN, 10 + l), weights(HIDDEN, D, 20 + l)))
                .collect(),
            out: weights(D, VOCAB, 3),
        }
    }

    fn bytes(&self) -> usize {
        4 * (self.emb.len()
            + self.out.len()
            + self
                .layers
                .iter()
                .map(|(a, b)| a.len() + b.len())
                .sum::<usize>())
    }

    /// Runs `tokens` through the model: the next token (argmax of the last
    /// position's logits) and every layer's output (the KV cache contents).
    fn forward(&self, tokens: &[u32]) -> (u32, Vec<Array2<f32>>) {
        let mut x = self.emb.select(
            Axis(0),
            &tokens
                .iter()
                .map(|t| *t as usize % VOCAB)
                .collect::<Vec<_>>(),
        );
        let mut kv = Vec::with_capacity(LAYERS);
        for (w1, w2) in &self.layers {
            let h = x.dot(w1).mapv(|v| v.max(0.0));
            x = &x + &h.dot(w2);
            kv.push(x.clone());
        }
        let last: ArrayView2<f32> = x.slice(ndarray::s![x.nrows() - 1.., ..]);
        let logits = last.dot(&self.out);
        let next =
            logits.iter().enumerate().fold(
                (0, f32::MIN),
                |best, (i, v)| if *v > best.1 { (i, *v) } else { best },
            );
        (next.0 as u32, kv)
    }
}

/// The server's state.
struct App<B: Memory> {
    model: Arc<Model>,
    engine: Arc<CachingAllocator<B>>,
    stream: B::Stream,
    monitor: MonitorGuard,
    metrics: alloc_toolkit::Metrics,
}

/// `POST /infer` body.
#[derive(Deserialize, Serialize)]
pub struct InferRequest {
    /// The client's id for the request (logged, never a scope name).
    pub id: u64,
    /// Prompt token ids.
    pub tokens: Vec<u32>,
}

/// `POST /infer` answer: the result and the request's own memory figures.
#[derive(Deserialize, Serialize)]
pub struct InferResponse {
    /// The request's id.
    pub id: u64,
    /// The predicted next token.
    pub next_token: u32,
    /// Prompt length.
    pub tokens: usize,
    /// Highest host bytes live in the request's scope.
    pub host_peak: u64,
    /// Highest device bytes live in the request's scope.
    pub device_peak: u64,
    /// Out-of-memory retries made.
    pub retries: u32,
    /// Server-side time, microseconds.
    pub server_us: u64,
}

fn text(status: StatusCode, body: String) -> Response {
    (status, body).into_response()
}

async fn infer<B: Memory>(State(app): State<Arc<App<B>>>, body: Bytes) -> Response
where
    B::Stream: Send + Sync,
{
    let started = Instant::now();
    let req: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad request body: {e}\n")),
    };
    if req.tokens.is_empty() || req.tokens.len() > 4096 {
        return text(StatusCode::BAD_REQUEST, "give 1 to 4096 tokens\n".into());
    }
    // One fixed scope name for every request: the per-name aggregates and
    // the metrics stay bounded; the id goes in the response and the logs.
    let scope = match ScopeBuilder::new("request").build() {
        Ok(s) => s,
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    let work = {
        let (app, scope) = (app.clone(), scope.clone());
        async move {
            let engine = &app.engine;
            let kv_bytes = req.tokens.len() * KV_PER_TOKEN;
            let policy = RetryPolicy {
                initial_backoff: Duration::from_millis(2),
                ..RetryPolicy::default()
            };
            let (kv, attempts) = retry_on_oom_async(
                |_| async { engine.allocate(kv_bytes, app.stream) },
                &policy,
                tokio::time::sleep,
            )
            .await
            .map_err(|e| e.to_string())?;
            // The matrix work on the blocking pool, in the request's scope.
            let model = app.model.clone();
            let tokens = req.tokens;
            let n = tokens.len();
            let (next, layers) =
                tokio::task::spawn_blocking(scope.bind(move || model.forward(&tokens)))
                    .await
                    .map_err(|e| e.to_string())?;
            // Each layer's output goes to its range of the KV cache.
            for (l, x) in layers.iter().enumerate() {
                if let Some(data) = x.as_slice() {
                    B::store(&kv, l * n * D, data);
                }
            }
            tokio::task::yield_now().await; // and maybe another worker thread
            drop(kv);
            Ok::<_, String>((next, n, attempts.attempts - 1))
        }
    };
    let result = work.in_scope(&scope).await;
    let stats = scope.stats();
    drop(scope);
    match result {
        Ok((next_token, tokens, retries)) => {
            let r = InferResponse {
                id: req.id,
                next_token,
                tokens,
                host_peak: stats.peak_bytes,
                device_peak: stats.device.peak_bytes,
                retries,
                server_us: started.elapsed().as_micros() as u64,
            };
            (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_string(&r).unwrap_or_default(),
            )
                .into_response()
        }
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn metrics<B: Memory>(State(app): State<Arc<App<B>>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], app.metrics.render()).into_response()
}

async fn memory_page<B: Memory>(State(app): State<Arc<App<B>>>) -> Response {
    let data = DashboardData::now("inference_server", app.monitor.summary().series);
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render_html(&data),
    )
        .into_response()
}

async fn memory_json<B: Memory>(State(app): State<Arc<App<B>>>) -> Response {
    let data = DashboardData::now("inference_server", app.monitor.summary().series);
    ([(header::CONTENT_TYPE, "application/json")], data.to_json()).into_response()
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>inference_server</title><p>POST /infer {\"id\":1,\"tokens\":[1,2,3]} · \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/debug/memory\">/debug/memory</a> · \
         <a href=\"/debug/memory.json\">/debug/memory.json</a>",
    )
        .into_response()
}

/// Options from the command line.
struct Options {
    serve: bool,
    port: u16,
    requests: usize,
    concurrency: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        serve: false,
        port: 0,
        requests: 300,
        concurrency: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match a.as_str() {
            "--serve" => o.serve = true,
            "--port" => o.port = num("--port")? as u16,
            "--requests" => o.requests = num("--requests")?.clamp(1, 100_000),
            "--concurrency" => o.concurrency = num("--concurrency")?.clamp(1, 1024),
            other => {
                return Err(format!(
                    "unknown argument {other}; use --serve, --port N, --requests N, --concurrency N"
                ));
            }
        }
    }
    if o.serve && o.port == 0 {
        o.port = 3000;
    }
    Ok(o)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = options()?;
    // Spans of this program at INFO and above become scopes (the model load).
    tracing_subscriber::registry()
        .with(
            ScopeLayer::new()
                .with_max_level(tracing::Level::INFO)
                .with_targets(["inference_server"]),
        )
        .init();
    let config = Config {
        max_reserved_bytes: Some(DEVICE_CAP),
        ..Config::default()
    };
    #[cfg(feature = "cuda")]
    let why = match alloc_cuda::CudaBackend::new(0) {
        Ok(backend) => {
            println!(
                "device: CUDA device 0 (alloc-cuda), capped at {}",
                b(DEVICE_CAP as u64)
            );
            let engine = Arc::new(CachingAllocator::new(backend, config));
            return run(engine, alloc_cuda::StreamHandle::DEFAULT, opts);
        }
        Err(e) => e.to_string(),
    };
    #[cfg(not(feature = "cuda"))]
    let why = "built without the `cuda` feature".to_owned();
    println!(
        "device: the caching engine over host memory, capped at {} ({why})",
        b(DEVICE_CAP as u64)
    );
    run(
        Arc::new(CachingAllocator::new(HostBackend::new(), config)),
        (),
        opts,
    )
}

fn run<B: Memory>(
    engine: Arc<CachingAllocator<B>>,
    stream: B::Stream,
    opts: Options,
) -> Result<(), Box<dyn std::error::Error>>
where
    B::Stream: Send + Sync,
{
    register_device("device0", engine.clone());
    let monitor = MemoryMonitor::new(MonitorConfig {
        interval: Duration::from_millis(20),
        capacity: 3000,
    })?
    .with_threshold(
        Threshold::device(
            "device0",
            DeviceFigure::Reserved,
            Level::Fraction(0.8),
            |e| {
                eprintln!(
                    "monitor: device0 reserved {} crossed {}",
                    b(e.value),
                    b(e.threshold)
                )
            },
        )
        .recover_below(Level::Fraction(0.6))
        .on_recover(|e| eprintln!("monitor: device0 reserved back to {}", b(e.value))),
    )?
    .start()?;
    let load_started = Instant::now();
    let model = Arc::new(Model::load());
    // The weights on the device too (copied where the host can write it).
    let device_weights = engine.allocate(model.bytes(), stream)?;
    B::store(&device_weights, 0, model.emb.as_slice().unwrap_or(&[]));
    println!(
        "model: {} parameters ({} host, {} device), loaded in {:.0} ms",
        model.bytes() / 4,
        b(model.bytes() as u64),
        b(device_weights.capacity() as u64),
        load_started.elapsed().as_secs_f64() * 1e3
    );
    let app = Arc::new(App {
        model,
        engine: engine.clone(),
        stream,
        monitor,
        metrics: alloc_toolkit::Metrics::new(),
    });
    let router = Router::new()
        .route("/", get(index))
        .route("/infer", post(infer::<B>))
        .route("/metrics", get(metrics::<B>))
        .route("/debug/memory", get(memory_page::<B>))
        .route("/debug/memory.json", get(memory_json::<B>))
        .with_state(app.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(4)
        .worker_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        if opts.serve {
            println!("serving on http://{addr}/ (loopback only): /infer, /metrics, /debug/memory; Ctrl-C stops");
            server.await??;
            return Ok(());
        }
        let report = tokio::time::timeout(
            Duration::from_secs(240),
            load::run(addr, opts.requests, opts.concurrency),
        )
        .await
        .map_err(|_| std::io::Error::other("the load run took over 240 s"))?
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        server.abort();
        report.print();
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    drop(device_weights);
    let summary = app.monitor.summary();
    println!(
        "\nmonitor: {} samples, max RSS {}, max device reserved {}, {} threshold crossing(s), {} recover(ies)",
        summary.samples,
        b(summary.max.rss),
        b(summary.max.device_reserved),
        summary.crossings,
        summary.recoveries
    );
    let recs = recommendations();
    println!(
        "\nrecommendations: {}",
        if recs.is_empty() {
            "none (no rule fired)"
        } else {
            ""
        }
    );
    for r in recs {
        println!(
            "  [{:?}] {} ({}): {}\n      -> {}",
            r.severity, r.subject, r.rule, r.evidence, r.remedy
        );
    }
    println!("\n{}", cleanup_all());
    Ok(())
}
