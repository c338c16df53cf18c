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
//! `... -- --requests 300 --concurrency 32` sizes the load; `-- --help`
//!   lists every option (timeouts, body limit, in-flight cap).
//!
//! What a client gets (`server.rs`): a head not in whole within
//! `--header-timeout` (10 s; also the idle limit of a kept-alive
//! connection) closes the connection; a body not in within `--body-timeout`
//! (10 s) gets 408; a body over `--max-body-bytes` (1 MiB) gets 413, from the
//! `Content-Length` alone when it announces one; a content type other than
//! `application/json` gets 415; a token id outside the vocabulary gets 400;
//! past `--max-in-flight` (32) requests in progress, or when the device has
//! no room for the KV cache after about 0.6 s of retries, 503 with
//! `Retry-After`. A request opens its `request` scope only once it is valid
//! and admitted; one admitted but then refused (for device memory) is marked
//! failed, so its figures go to `request (failed)`, and the `request`
//! distribution holds only the requests answered 200.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, Config, HostBackend};
use alloc_host::{TrackingAllocator, format_bytes as b};
use alloc_toolkit::{
    DeviceFigure, Level, MemoryMonitor, MonitorConfig, ScopeLayer, Threshold, cleanup_all,
    recommendations, register_device,
};
use tracing_subscriber::prelude::*;

mod cli;
mod load;
mod server;

pub use server::{App, D, DEVICE_CAP, InferRequest, InferResponse, LAYERS, Memory, Model};

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = <cli::Options as clap::Parser>::parse();
    // Heap sampling (served at /debug/pprof/heap): on at 512 KiB unless the
    // command line or ALLOC_PROFILE_RATE says otherwise.
    match opts.profile_rate {
        Some(rate) => alloc_host::set_sample_rate(rate),
        None if std::env::var_os(alloc_host::profile::RATE_ENV).is_none() => {
            alloc_host::set_sample_rate(alloc_host::profile::DEFAULT_MEAN)
        }
        None => {}
    }
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
    opts: cli::Options,
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
    let router = server::router(app.clone(), &opts.server_config());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(4)
        .worker_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port())).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(server::serve(listener, router, opts.server_config()));
        if opts.serve {
            println!("serving on http://{addr}/ (loopback only): /infer, /metrics, /debug/memory; Ctrl-C stops");
            server.await??;
            return Ok(());
        }
        let report = tokio::time::timeout(
            Duration::from_secs(240),
            load::run(addr, opts.requests as usize, opts.concurrency as usize),
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
