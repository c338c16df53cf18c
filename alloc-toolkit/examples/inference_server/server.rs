//! The inference server itself: the model, the state, the handlers and the
//! router. Kept apart from `main.rs` (the command line, the tracking
//! allocator, the load run) so that tests can start the same server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, DeviceBackend, DeviceBuffer, HostBackend};
use alloc_host::{Instrument, ScopeBuilder};
use alloc_toolkit::{
    DashboardData, MonitorGuard, RetryPolicy, metrics::CONTENT_TYPE, render_html,
    retry_on_oom_async,
};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Vocabulary size: token ids run from 0 to `VOCAB - 1`.
pub const VOCAB: usize = 4096;
/// Longest prompt, in tokens.
pub const MAX_TOKENS: usize = 4096;
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

/// An answer after which the connection is closed (the request's body may
/// be left unread).
fn closing(status: StatusCode, body: String) -> Response {
    (status, [(header::CONNECTION, "close")], body).into_response()
}

/// The `/infer` route's state: the app, the limits, and the admission gate.
struct Gate<B: Memory> {
    app: Arc<App<B>>,
    config: ServerConfig,
    in_flight: Semaphore,
    /// Requests that found the device short of memory (logged at powers of
    /// two, so a burst cannot flood the log).
    short: AtomicU64,
}

impl<B: Memory> Gate<B> {
    /// 503 with `Retry-After` and `why`, written for the client.
    fn unavailable(&self, why: &str) -> Response {
        let secs = self.config.retry_after_secs;
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, secs.to_string())],
            format!("{why}; retry after {secs} s\n"),
        )
            .into_response()
    }
}

/// Checks the request's head: `Content-Type: application/json`, and a
/// `Content-Length` (when given) within the limit. The answer when it is
/// refused.
fn refuse_head(headers: &HeaderMap, max_body: usize) -> Option<Response> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Some(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "no Content-Type given; expected Content-Type: application/json\n".into(),
        ));
    };
    let ct = String::from_utf8_lossy(ct.as_bytes());
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Some(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {ct:?} is not accepted; expected Content-Type: application/json\n"
            ),
        ));
    }
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len = String::from_utf8_lossy(len.as_bytes());
        match len.trim().parse::<u64>() {
            Ok(n) if n > max_body as u64 => {
                return Some(closing(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "Content-Length {n} is over the limit of {max_body} bytes; send a smaller body (a prompt of at most {MAX_TOKENS} tokens)\n"
                    ),
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Some(closing(
                    StatusCode::BAD_REQUEST,
                    format!("Content-Length {len:?} is not a byte count\n"),
                ));
            }
        }
    }
    None
}

/// Checks the request's fields against the model.
fn check_request(req: &InferRequest) -> Result<(), String> {
    if req.tokens.is_empty() || req.tokens.len() > MAX_TOKENS {
        return Err(format!(
            "{} tokens given; give 1 to {MAX_TOKENS}\n",
            req.tokens.len()
        ));
    }
    if let Some((i, t)) = req
        .tokens
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= VOCAB)
    {
        return Err(format!(
            "token id {t} (position {i}) is outside the vocabulary of {VOCAB} tokens; give ids from 0 to {}\n",
            VOCAB - 1
        ));
    }
    Ok(())
}

async fn infer<B: Memory>(
    State(gate): State<Arc<Gate<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Response
where
    B::Stream: Send + Sync,
{
    let started = Instant::now();
    let config = &gate.config;
    if let Some(answer) = refuse_head(&headers, config.max_body_bytes) {
        return answer;
    }
    let limited = axum::body::to_bytes(body, config.max_body_bytes);
    let body = match tokio::time::timeout(config.body_timeout, limited).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if over {
                closing(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the body is over the limit of {} bytes; send a smaller body (a prompt of at most {MAX_TOKENS} tokens)\n",
                        config.max_body_bytes
                    ),
                )
            } else {
                closing(
                    StatusCode::BAD_REQUEST,
                    format!("the body could not be read: {e}\n"),
                )
            };
        }
        Err(_) => {
            return closing(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {:.1} s; send it whole, at once\n",
                    config.body_timeout.as_secs_f64()
                ),
            );
        }
    };
    let req: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad request body: {e}\n")),
    };
    if let Err(why) = check_request(&req) {
        return text(StatusCode::BAD_REQUEST, why);
    }
    // Admitted only under the cap: the excess is shed at once, before its
    // scope is opened, so it never counts as a `request`.
    let Ok(_permit) = gate.in_flight.try_acquire() else {
        return gate.unavailable(&format!(
            "the server is busy: {} requests in progress, its limit",
            config.max_in_flight
        ));
    };
    let app = &gate.app;
    // One fixed scope name for every request: the per-name aggregates and
    // the metrics stay bounded; the id goes in the response and the logs.
    let scope = match ScopeBuilder::new("request").build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("request {}: no scope: {e}", req.id);
            return gate.unavailable("the server cannot take more requests now");
        }
    };
    let id = req.id;
    let work = {
        let (app, scope) = (app.clone(), scope.clone());
        async move {
            let engine = &app.engine;
            let kv_bytes = req.tokens.len() * KV_PER_TOKEN;
            // An admitted request waits (up to about 0.6 s in all) for the
            // requests ahead of it to give their KV caches back before it is
            // answered 503.
            let policy = RetryPolicy {
                max_attempts: 8,
                initial_backoff: Duration::from_millis(5),
                ..RetryPolicy::default()
            };
            let (kv, attempts) = retry_on_oom_async(
                |_| async { engine.allocate(kv_bytes, app.stream) },
                &policy,
                tokio::time::sleep,
            )
            .await
            .map_err(|e| Failure::Short(e.to_string()))?;
            // The matrix work on the blocking pool, in the request's scope.
            let model = app.model.clone();
            let tokens = req.tokens;
            let n = tokens.len();
            let (next, layers) =
                tokio::task::spawn_blocking(scope.bind(move || model.forward(&tokens)))
                    .await
                    .map_err(|e| Failure::Internal(e.to_string()))?;
            // Each layer's output goes to its range of the KV cache.
            for (l, x) in layers.iter().enumerate() {
                if let Some(data) = x.as_slice() {
                    B::store(&kv, l * n * D, data);
                }
            }
            tokio::task::yield_now().await; // and maybe another worker thread
            drop(kv);
            Ok::<_, Failure>((next, n, attempts.attempts - 1))
        }
    };
    let result = work.in_scope(&scope).await;
    if result.is_err() {
        // Its figures go to `request (failed)`: the `request` distribution
        // holds only requests that were answered 200.
        scope.mark_failed();
    }
    let stats = scope.stats();
    drop(scope);
    match result {
        Ok((next_token, tokens, retries)) => {
            let r = InferResponse {
                id,
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
        Err(Failure::Short(e)) => {
            // The allocator's text (and its remedy) is for the operator.
            let n = gate.short.fetch_add(1, Relaxed) + 1;
            if n.is_power_of_two() {
                eprintln!("request {id}: device memory short ({n} request(s) so far): {e}");
            }
            gate.unavailable("the server is short of memory for this request right now")
        }
        Err(Failure::Internal(e)) => {
            eprintln!("request {id}: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request failed inside the server\n".into(),
            )
        }
    }
}

/// Why an admitted request failed.
enum Failure {
    /// The device had no room for its KV cache, even after retries.
    Short(String),
    /// The model's task failed.
    Internal(String),
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

/// `/debug/pprof/heap`: the sampled heap profile (read-only).
/// `?kind=inuse|alloc` (default inuse), `?scope=NAME` (only that scope
/// name), `?format=pprof|svg|text` (default pprof: gzip'd protobuf for
/// `go tool pprof`; svg: a flamegraph; text: the top sites).
async fn pprof_heap(uri: axum::http::Uri) -> Response {
    use alloc_host::profile::{Filter, Kind, profile_filtered};
    let mut kind = Kind::InUse;
    let mut filter = Filter::All;
    let mut format = "pprof".to_string();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "kind" => match Kind::parse(&v) {
                Some(k) => kind = k,
                None => {
                    return bad(format!(
                        "kind={v:?} is not a heap profile kind; use kind=inuse or kind=alloc"
                    ));
                }
            },
            "scope" => filter = Filter::Name(v),
            "format" => match v.as_str() {
                "pprof" | "svg" | "text" => format = v,
                _ => {
                    return bad(format!(
                        "format={v:?} is not an output format; use format=pprof, svg or text"
                    ));
                }
            },
            _ => {
                return bad(format!(
                    "{k:?} is not a parameter; use kind, scope or format"
                ));
            }
        }
    }
    let work = move || {
        let p = profile_filtered(kind, filter);
        match format.as_str() {
            "svg" => ("image/svg+xml", p.to_flamegraph_svg()),
            "text" => ("text/plain; charset=utf-8", p.to_text(30).into_bytes()),
            _ => ("application/octet-stream", p.to_pprof()),
        }
    };
    match tokio::task::spawn_blocking(move || alloc_host::untracked(work)).await {
        Ok((ct, body)) => ([(header::CONTENT_TYPE, ct)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile failed: {e}"),
        )
            .into_response(),
    }
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg + "\n").into_response()
}

/// `%XX` and `+` decoded (scope names may hold spaces).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>inference_server</title><p>POST /infer with Content-Type: application/json, {\"id\":1,\"tokens\":[1,2,3]} (token ids 0 to 4095) · \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/debug/memory\">/debug/memory</a> · \
         <a href=\"/debug/memory.json\">/debug/memory.json</a> · \
         <a href=\"/debug/pprof/heap?format=text\">/debug/pprof/heap</a>",
    )
        .into_response()
}

/// Limits and timeouts of the HTTP side (`--header-timeout`,
/// `--body-timeout`, `--max-body-bytes`, `--max-in-flight`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Longest wait for a request's head, from the moment the connection
    /// is ready for it: also the longest a kept-alive connection stays idle.
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body once its head is read
    /// (answered 408, connection closed).
    pub body_timeout: Duration,
    /// Largest request body accepted (413 beyond; a larger
    /// `Content-Length` is answered before any of the body is read).
    pub max_body_bytes: usize,
    /// Most `/infer` requests in progress at once; the excess is answered
    /// 503 with `Retry-After` at once.
    pub max_in_flight: usize,
    /// Seconds a client is told to wait after a 503.
    pub retry_after_secs: u64,
}

impl Default for ServerConfig {
    /// 10 s for a head (and idle), 10 s for a body, 1 MiB bodies (a
    /// prompt of `MAX_TOKENS` ids takes at most 45 KiB), 32 requests in
    /// progress (32 of the longest prompts hold 256 MiB of KV cache, the
    /// device cap: past it a request's retries wait for others to finish,
    /// then it is answered 503), `Retry-After: 1`.
    fn default() -> Self {
        ServerConfig {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            max_in_flight: 32,
            retry_after_secs: 1,
        }
    }
}

/// The server's routes over `app`, `/infer` under `config`'s limits.
pub fn router<B: Memory>(app: Arc<App<B>>, config: &ServerConfig) -> Router
where
    B::Stream: Send + Sync,
{
    let gate = Arc::new(Gate {
        app: app.clone(),
        config: config.clone(),
        in_flight: Semaphore::new(config.max_in_flight),
        short: AtomicU64::new(0),
    });
    Router::new()
        .route("/", get(index))
        .route("/infer", post(infer::<B>).with_state(gate))
        .route("/metrics", get(metrics::<B>))
        .route("/debug/memory", get(memory_page::<B>))
        .route("/debug/memory.json", get(memory_json::<B>))
        .route("/debug/pprof/heap", get(pprof_heap))
        .with_state(app)
}

/// Serves `router` on `listener`, one HTTP/1.1 connection per task, until
/// the task is dropped. A connection whose next request head does not
/// arrive whole within `config.header_timeout` is closed: that cuts a
/// client sending half its headers and bounds how long a kept-alive
/// connection may sit idle between requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: ServerConfig,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors and the like: wait for some to close.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Latency over batching for small JSON answers; best effort.
        tcp.set_nodelay(true).ok();
        let conn =
            http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()));
        tokio::spawn(async move {
            // A client going away mid-request is its own business.
            conn.await.ok();
        });
    }
}
