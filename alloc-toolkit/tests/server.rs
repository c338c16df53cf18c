//! A server's requests on a multi-thread tokio runtime, with the tracking
//! allocator installed: hundreds of concurrent requests, each a scope that
//! follows its task across `.await`, worker threads and the blocking pool,
//! each charged exactly its own host and device memory; and the metrics'
//! series count does not grow with the number of requests.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};
use alloc_host::{Instrument, ScopeBuilder, TrackingAllocator};
use alloc_toolkit::Metrics;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

struct Outcome {
    host_bytes: usize,
    device_bytes: usize,
    host_peak: u64,
    device_peak: u64,
    threads: usize,
}

/// One request: host memory on two worker-thread polls and on the blocking
/// pool, device memory held across awaits. Returns its figures.
async fn request(
    i: usize,
    name: &'static str,
    engine: Arc<CachingAllocator<SimBackend>>,
) -> Outcome {
    let host_bytes = (i % 50 + 1) * 16 * KIB;
    let device_bytes = (i % 37 + 1) * MIB;
    let scope = ScopeBuilder::new(name).build().unwrap();
    let handle = scope.clone();
    let work = async move {
        let mut threads = HashSet::new();
        threads.insert(std::thread::current().id());
        let a = vec![1u8; host_bytes];
        tokio::task::yield_now().await;
        let d = engine.allocate(device_bytes, SimStream(0)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        threads.insert(std::thread::current().id());
        let b = tokio::task::spawn_blocking(handle.bind(move || vec![2u8; host_bytes]))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        threads.insert(std::thread::current().id());
        std::hint::black_box((&a, &b));
        let capacity = d.capacity();
        drop((a, b, d));
        (threads.len(), capacity)
    };
    let (threads, capacity) = work.in_scope(&scope).await;
    let s = scope.stats();
    assert_eq!(capacity, device_bytes, "1 MiB multiples need no rounding");
    Outcome {
        host_bytes,
        device_bytes,
        host_peak: s.peak_bytes,
        device_peak: s.device.peak_bytes,
        threads,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

async fn serve(
    n: usize,
    name: &'static str,
    engine: &Arc<CachingAllocator<SimBackend>>,
) -> Vec<Outcome> {
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(request(i, name, engine.clone())))
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[test]
fn every_concurrent_request_is_charged_its_own_memory() {
    const N: usize = 400;
    let engine = Arc::new(CachingAllocator::new(
        SimBackend::new(64 << 30),
        Config::default(),
    ));
    let rt = runtime();
    // Warm up with the same load: the blocking pool's threads, the engine's
    // own tables and the timer wheel grow once, to the size this load needs;
    // that growth is charged to whichever request triggered it.
    rt.block_on(serve(N, "server-test-warmup", &engine));
    let outcomes = rt.block_on(serve(N, "server-test-request", &engine));
    let mut over: Vec<u64> = outcomes
        .iter()
        .map(|o| o.host_peak.saturating_sub(2 * o.host_bytes as u64))
        .collect();
    over.sort();
    eprintln!(
        "host bytes beyond the request's own, per request: min {} median {} max {}",
        over[0],
        over[N / 2],
        over[N - 1]
    );
    // Slack for the runtime's own allocations made while the scope is
    // entered (task cells, timer entries, the blocking closure).
    const SLACK: u64 = 4 * KIB as u64;
    let mut hopped = 0;
    for (i, o) in outcomes.iter().enumerate() {
        let host = 2 * o.host_bytes as u64; // `a` and `b` live together
        assert!(
            o.host_peak >= host && o.host_peak <= host + SLACK,
            "request {i}: host peak {} for {} B held (+{} slack)",
            o.host_peak,
            host,
            SLACK
        );
        assert_eq!(
            o.device_peak, o.device_bytes as u64,
            "request {i}: device peak"
        );
        hopped += usize::from(o.threads > 1);
    }
    assert!(
        hopped > 0,
        "no request ran on more than one thread: the test proves nothing"
    );
    let agg = alloc_host::aggregate("server-test-request").unwrap();
    assert_eq!(agg.closed, N as u64);
    assert_eq!(agg.device_peak.max, 37 * MIB as u64);
    let total: u64 = outcomes.iter().map(|o| o.device_bytes as u64).sum();
    assert_eq!(agg.device_peak.sum, total);
}

/// The sample lines of a Prometheus text: `name{labels} value`.
fn series(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        // Scope names of the other tests of this binary, which run at once.
        .filter(|l| !l.contains("scope=\"server-test-"))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .collect()
}

#[test]
fn metrics_series_do_not_grow_with_requests() {
    let engine = Arc::new(CachingAllocator::new(
        SimBackend::new(64 << 30),
        Config::default(),
    ));
    alloc_toolkit::register_device("server-test-gpu", engine.clone());
    let metrics = Metrics::new();
    let rt = runtime();
    rt.block_on(serve(20, "cardinality-request", &engine));
    let after_20 = series(&metrics.render());
    rt.block_on(serve(500, "cardinality-request", &engine));
    let text = metrics.render();
    let after_520 = series(&text);
    assert_eq!(
        after_20, after_520,
        "the same series after 20 and 520 requests"
    );
    let hist: Vec<_> = after_520
        .iter()
        .filter(|s| {
            s.starts_with("alloc_scope_host_peak_bytes_bucket{scope=\"cardinality-request\"")
        })
        .collect();
    assert_eq!(
        hist.len(),
        alloc_toolkit::metrics::PEAK_BUCKETS.len() + 1,
        "{hist:?}"
    );
    let count = text
        .lines()
        .find(|l| l.starts_with("alloc_scope_closed_total{scope=\"cardinality-request\"}"))
        .unwrap();
    assert!(count.ends_with(" 520"), "{count}");
    // Every scope label is a scope name, never an instance.
    for s in &after_520 {
        assert!(!s.contains("id=\""), "{s}");
    }
    alloc_toolkit::unregister_device("server-test-gpu");
}
