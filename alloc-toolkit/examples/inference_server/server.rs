//! The inference server itself: the model, the state, the handlers and the
//! router. Kept apart from `main.rs` (the command line, the tracking
//! allocator, the load run) so that tests can start the same server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, DeviceBackend, DeviceBuffer, HostBackend};
use alloc_host::{Instrument, ScopeBuilder};
use alloc_toolkit::{
    DashboardData, MonitorGuard, RetryPolicy, metrics::CONTENT_TYPE, render_html,
    retry_on_oom_async,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// Vocabulary size: token ids run from 0 to `VOCAB - 1`.
pub const VOCAB: usize = 4096;
/// Model width.
pub const D: usize = 128;
/// Feed-forward width.
pub const HIDDEN: usize = 512;
/// Residual blocks.
pub const LAYERS: usize = 2;
/// Device bytes of KV cache per token: K and V, f32, every layer.
pub const KV_PER_TOKEN: usize = 2 * 4 * D * LAYERS;
/// The engine's cap on reserved bytes.
pub const DEVICE_CAP: usize = 256 << 20;

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
pub struct Model {
    /// The embedding table, `VOCAB` x `D`.
    pub emb: Array2<f32>,
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
    pub fn load() -> Model {
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

    /// Bytes of weights.
    pub fn bytes(&self) -> usize {
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
pub struct App<B: Memory> {
    /// The weights.
    pub model: Arc<Model>,
    /// The device's caching engine (KV caches come from it).
    pub engine: Arc<CachingAllocator<B>>,
    /// The stream KV caches are allocated on.
    pub stream: B::Stream,
    /// The memory monitor behind `/debug/memory`.
    pub monitor: MonitorGuard,
    /// The Prometheus registry behind `/metrics`.
    pub metrics: alloc_toolkit::Metrics,
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

/// The server's routes over `app`.
pub fn router<B: Memory>(app: Arc<App<B>>) -> Router
where
    B::Stream: Send + Sync,
{
    Router::new()
        .route("/", get(index))
        .route("/infer", post(infer::<B>))
        .route("/metrics", get(metrics::<B>))
        .route("/debug/memory", get(memory_page::<B>))
        .route("/debug/memory.json", get(memory_json::<B>))
        .with_state(app)
}

/// Serves `router` on `listener` until the task is dropped or fails.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}
