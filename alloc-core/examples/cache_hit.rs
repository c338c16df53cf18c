//! Times cache-hit alloc+free pairs (small and large pool) on the simulated
//! backend and prints the p50 and p90 over batches of 1,000 pairs, with one
//! thread and with two threads sharing the engine (each on its own stream):
//! `cargo run --release -p alloc-core --example cache_hit [BATCHES]`.

use std::hint::black_box;
use std::time::Instant;

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};

const BATCH: usize = 1000;

/// Per-pair times (ns) of `batches` batches of `BATCH` pairs on `stream`.
fn batches(
    a: &CachingAllocator<SimBackend>,
    size: usize,
    stream: SimStream,
    batches: usize,
) -> Vec<f64> {
    drop(a.allocate(size, stream).expect("the device has room"));
    (0..batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                drop(black_box(
                    a.allocate(black_box(size), stream).expect("cache hit"),
                ));
            }
            t.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    for (name, size) in [("small 4 KiB", 4096usize), ("large 8 MiB", 8 << 20)] {
        let a = CachingAllocator::new(SimBackend::new(64 << 30), Config::default());
        let mut one = batches(&a, size, SimStream(0), n);
        println!(
            "{name}, 1 thread:  p50 {:.1} ns, p90 {:.1} ns per alloc+free pair",
            pct(&mut one, 0.5),
            pct(&mut one, 0.9)
        );
        let barrier = std::sync::Barrier::new(2);
        let start = Instant::now();
        let mut two: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u32)
                .map(|t| {
                    let (a, barrier) = (&a, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        batches(a, size, SimStream(t), n)
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let wall = start.elapsed().as_nanos() as f64 / (2 * n * BATCH) as f64;
        println!(
            "{name}, 2 threads: p50 {:.1} ns, p90 {:.1} ns per pair per thread; {wall:.1} ns of wall time per pair in all",
            pct(&mut two, 0.5),
            pct(&mut two, 0.9)
        );
    }
}
