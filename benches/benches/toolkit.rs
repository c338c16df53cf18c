//! The toolkit's targets: one monitor sample (what a 10 ms sampler pays 100
//! times a second), the monitor's measured CPU share while the process idles,
//! and the exporters rendering 1,000 scopes. The tracking allocator is
//! installed so the sample reads real tracked figures; one caching engine is
//! registered so it reads a device too.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};
use alloc_host::{ScopeNode, ScopeStats, ScopeTree, TrackingAllocator};
use alloc_toolkit::{
    HostAllocs, MemoryMonitor, MonitorConfig, ProcessSource, Sample, SampleSource, json_text,
    memory_info, register_device, render_memory_report,
};
use criterion::Criterion;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

/// A tree of `n` scopes: a root, 10 batches, the rest requests.
fn tree(n: usize) -> ScopeTree {
    let scopes = (0..n)
        .map(|i| ScopeNode {
            stats: ScopeStats {
                id: i as u64,
                name: format!("request {i}"),
                live_bytes: 4096 * i as u64,
                peak_bytes: 8192 * i as u64,
                allocations: 17 * i as u64,
                bytes_allocated: 65536 * i as u64,
                depth: if i == 0 { 0 } else { 2 },
                ..ScopeStats::default()
            },
            parent: (i > 0).then_some(0),
        })
        .collect();
    ScopeTree {
        scopes,
        scopes_not_created: 0,
        capacity: 16384,
    }
}

fn exporters(c: &mut Criterion) {
    let t = tree(1000);
    let info = memory_info();
    let mut g = c.benchmark_group("toolkit/export_1000_scopes");
    g.bench_function("json", |b| b.iter(|| black_box(json_text(&info, &t))));
    g.bench_function("report_table", |b| {
        b.iter(|| black_box(render_memory_report(&info, Some(&t))))
    });
    g.finish();
    // A scrape of the Prometheus exporter: its size depends on the number of
    // scope names and devices, not on the number of scopes.
    let metrics = alloc_toolkit::Metrics::new();
    c.bench_function("toolkit/metrics_scrape", |b| {
        b.iter(|| black_box(metrics.render()))
    });
    c.bench_function("toolkit/recommendations", |b| {
        b.iter(|| black_box(alloc_toolkit::recommendations()))
    });
}

fn monitor_sample(c: &mut Criterion) {
    let mut src = ProcessSource::new();
    c.bench_function("toolkit/monitor_sample", |b| {
        b.iter(|| black_box(src.sample()))
    });
    let m = MemoryMonitor::new(MonitorConfig::default()).unwrap();
    let mut t = Duration::ZERO;
    c.bench_function("toolkit/monitor_tick", |b| {
        b.iter(|| {
            t += Duration::from_millis(10);
            black_box(m.tick_at(t))
        })
    });
}

/// CPU time of the thread named `name` (from /proc/self/task/*/schedstat,
/// nanoseconds on CPU).
fn thread_cpu(name: &str) -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
            return Some(Duration::from_nanos(ns));
        }
    }
    None
}

/// The monitor thread's own CPU time over `secs` seconds of sampling every
/// 10 ms, as a share of one core: with the process source, and with a source
/// that reads nothing (the cost of waking up alone).
fn monitor_cpu_share(secs: u64) {
    let constant = || Sample::default();
    for (label, monitor) in [
        (
            "process source",
            MemoryMonitor::new(MonitorConfig::default()),
        ),
        (
            "empty source (wake-ups alone)",
            MemoryMonitor::with_source(MonitorConfig::default(), constant),
        ),
    ] {
        let guard = monitor.unwrap().start().unwrap();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let cpu = thread_cpu("memory-monitor");
        let wall = t0.elapsed();
        let summary = guard.stop();
        match cpu {
            Some(cpu) => println!(
                "toolkit/monitor_cpu_share ({label}): {} samples in {:.2} s at 10 ms; monitor thread CPU {:.2} ms = {:.3}% of a core",
                summary.samples,
                wall.as_secs_f64(),
                cpu.as_secs_f64() * 1e3,
                100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
            ),
            None => println!("toolkit/monitor_cpu_share: /proc/self/task/*/schedstat unavailable"),
        }
    }
}

/// A scrape once scopes of `names` distinct names have closed (ten of each,
/// with host peaks from 1 KiB to 1 MiB): what the per-name figures cost. Runs
/// after the other cases, since the closed scopes stay in the aggregates.
fn metrics_scrape_with_names(c: &mut Criterion) {
    let metrics = alloc_toolkit::Metrics::new();
    let mut g = c.benchmark_group("toolkit/metrics_scrape_names");
    let mut closed = 0;
    for names in [10usize, 100] {
        for n in closed..names {
            for k in 0..10usize {
                let s = alloc_host::scope(&format!("bench-name-{n}"));
                black_box(vec![0u8; 1024 << (k % 11)]);
                drop(s);
            }
        }
        closed = names;
        g.bench_function(format!("{names}"), |b| {
            b.iter(|| black_box(metrics.render()))
        });
    }
    g.finish();
}

fn host_allocs_measurement() {
    let mut c = Criterion::default()
        .with_measurement(HostAllocs::bytes())
        .configure_from_args();
    c.bench_function("toolkit/bytes_per_iter/vec_1KiB", |b| {
        b.iter(|| black_box(vec![0u8; 1024]))
    });
}

fn main() {
    let engine = Arc::new(CachingAllocator::new(
        SimBackend::new(1 << 30),
        Config::default(),
    ));
    let keep = engine.allocate(8 << 20, SimStream(0)).unwrap();
    register_device("sim0", engine.clone());
    let mut c = Criterion::default().configure_from_args();
    exporters(&mut c);
    monitor_sample(&mut c);
    metrics_scrape_with_names(&mut c);
    c.final_summary();
    host_allocs_measurement();
    if std::env::args().any(|a| a == "--bench") {
        monitor_cpu_share(5);
    }
    drop(keep);
}
