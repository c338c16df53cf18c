//! The built-in load generator: `concurrency` HTTP/1.1 connections to the
//! server on 127.0.0.1, `requests` requests in all with prompt lengths from a
//! fixed heavy-tailed distribution, and a scraper that fetches `/metrics`
//! and `/debug/memory` while they run. Bounded in count; the caller bounds it
//! in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use alloc_host::format_bytes as b;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::{InferRequest, InferResponse};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/1.1 connection.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// Sends one request; the status and the body.
async fn call(
    send: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Bytes), Error> {
    send.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Prompt length of request `i`: mostly short, a long tail up to 1,024.
fn prompt_len(i: usize) -> usize {
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    let u = x as f64 / (1u64 << 53) as f64;
    (16.0 + 1008.0 * u.powi(3)) as usize
}

/// What the run measured.
pub struct Report {
    requests: usize,
    concurrency: usize,
    failed: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    responses: Vec<InferResponse>,
    scrapes: usize,
    metrics_series: usize,
    metrics_bytes: usize,
    dashboard_bytes: usize,
}

fn quantile<T: Copy + Ord>(sorted: &[T], q: f64) -> Option<T> {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied()
}

impl Report {
    /// Prints the figures, and what is real and what is simulated.
    pub fn print(&self) {
        let ok = self.responses.len();
        let tokens: usize = self.responses.iter().map(|r| r.tokens).sum();
        let secs = self.wall.as_secs_f64();
        println!(
            "\nload: {} requests ({} failed) over {} connections in {:.2} s: {:.0} requests/s, {:.0} prompt tokens/s",
            self.requests,
            self.failed,
            self.concurrency,
            secs,
            ok as f64 / secs,
            tokens as f64 / secs
        );
        let mut lat = self.latencies.clone();
        lat.sort();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let mut host: Vec<u64> = self.responses.iter().map(|r| r.host_peak).collect();
        let mut dev: Vec<u64> = self.responses.iter().map(|r| r.device_peak).collect();
        host.sort();
        dev.sort();
        let q = |v: &[u64], p| b(quantile(v, p).unwrap_or(0));
        println!(
            "{:<28} {:>12} {:>12} {:>12}",
            "per request", "p50", "p99", "max"
        );
        println!(
            "{:<28} {:>9.2} ms {:>9.2} ms {:>9.2} ms",
            "latency (client, HTTP)",
            ms(quantile(&lat, 0.5)),
            ms(quantile(&lat, 0.99)),
            ms(lat.last().copied())
        );
        println!(
            "{:<28} {:>12} {:>12} {:>12}",
            "host peak (scope)",
            q(&host, 0.5),
            q(&host, 0.99),
            q(&host, 1.0)
        );
        println!(
            "{:<28} {:>12} {:>12} {:>12}",
            "device peak (scope)",
            q(&dev, 0.5),
            q(&dev, 0.99),
            q(&dev, 1.0)
        );
        let retries: u32 = self.responses.iter().map(|r| r.retries).sum();
        println!("out-of-memory retries: {retries}");
        if let Some(a) = alloc_host::aggregate("request") {
            println!(
                "aggregates of scope `request`: {} closed; host peak p50 {} p99 {}; device peak p50 {} p99 {} (estimate, ±1%)",
                a.closed,
                b(a.host_peak.quantile(0.5)),
                b(a.host_peak.quantile(0.99)),
                b(a.device_peak.quantile(0.5)),
                b(a.device_peak.quantile(0.99))
            );
        }
        println!(
            "scraped while serving: {} times; /metrics {} series in {} (bounded: by scope name, not by request), /debug/memory {}",
            self.scrapes,
            self.metrics_series,
            b(self.metrics_bytes as u64),
            b(self.dashboard_bytes as u64)
        );
        println!(
            "\nreal: HTTP/1.1 over 127.0.0.1 (axum router on hyper's HTTP/1.1 server, hyper client); the model's matrix work \
             (ndarray, {} layers, width {}); per-request host memory (tracking allocator, scope \
             followed across .await and the blocking pool); device memory taken from the caching engine.\n\
             simulated: the weights are random, not a trained model; the prompts are generated; \
             without a GPU the device is the caching engine over host memory, and on a GPU the \
             matrix work still runs on the CPU (the device holds the weights and KV caches).",
            crate::LAYERS,
            crate::D
        );
    }
}

/// Scrapes `/metrics` and `/debug/memory` every 200 ms until `done`.
async fn scrape(
    addr: SocketAddr,
    done: Arc<AtomicUsize>,
    total: usize,
) -> Result<(usize, usize, usize, usize), Error> {
    let mut send = connect(addr).await?;
    let (mut n, mut series, mut mbytes, mut dbytes) = (0, 0, 0, 0);
    while done.load(Relaxed) < total && n < 1000 {
        let (s1, m) = call(&mut send, Method::GET, "/metrics", Vec::new()).await?;
        let (s2, d) = call(&mut send, Method::GET, "/debug/memory", Vec::new()).await?;
        if s1 != 200 || s2 != 200 {
            return Err(format!("scrape status {s1} / {s2}").into());
        }
        let text = String::from_utf8_lossy(&m);
        series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        (mbytes, dbytes) = (m.len(), d.len());
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((n, series, mbytes, dbytes))
}

/// Runs the load against `addr`.
pub async fn run(addr: SocketAddr, requests: usize, concurrency: usize) -> Result<Report, Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let scraper = tokio::spawn(scrape(addr, done.clone(), requests));
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(requests) {
        let (next, done) = (next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut send = connect(addr).await?;
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= requests {
                    break;
                }
                let req = InferRequest {
                    id: i as u64,
                    tokens: (0..prompt_len(i) as u32)
                        .map(|t| t.wrapping_mul(2654435761) % 4096)
                        .collect(),
                };
                let t0 = Instant::now();
                let (status, body) =
                    call(&mut send, Method::POST, "/infer", serde_json::to_vec(&req)?).await?;
                let lat = t0.elapsed();
                done.fetch_add(1, Relaxed);
                out.push((status, body, lat));
            }
            Ok::<_, Error>(out)
        }));
    }
    let mut report = Report {
        requests,
        concurrency,
        failed: 0,
        wall: Duration::ZERO,
        latencies: Vec::with_capacity(requests),
        responses: Vec::with_capacity(requests),
        scrapes: 0,
        metrics_series: 0,
        metrics_bytes: 0,
        dashboard_bytes: 0,
    };
    for w in workers {
        for (status, body, lat) in w.await?? {
            match (status, serde_json::from_slice::<InferResponse>(&body)) {
                (200, Ok(r)) => {
                    report.latencies.push(lat);
                    report.responses.push(r);
                }
                _ => report.failed += 1,
            }
        }
    }
    report.wall = started.elapsed();
    (
        report.scrapes,
        report.metrics_series,
        report.metrics_bytes,
        report.dashboard_bytes,
    ) = scraper.await??;
    Ok(report)
}
