//! The caching engine: cache-hit alloc+free pairs (small and large pool; one
//! thread, and one and two threads each on its own stream, timed per pair of
//! the aggregate) and RMM's random_allocations workload (73 % allocate,
//! uniform sizes, a memory cap), on 1 and 2 threads, over the simulated
//! backend.

use std::hint::black_box;
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, Config, DeviceBuffer, SimBackend, SimStream};
use criterion::{Criterion, criterion_group, criterion_main};

const MIB: usize = 1 << 20;

fn cache_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/cache_hit_pair");
    for (name, size) in [("small_4KiB", 4096usize), ("large_8MiB", 8 * MIB)] {
        let a = CachingAllocator::new(SimBackend::new(64 << 30), Config::default());
        drop(a.allocate(size, SimStream(0)).unwrap());
        g.bench_function(name, |b| {
            b.iter(|| {
                drop(black_box(
                    a.allocate(black_box(size), SimStream(0)).unwrap(),
                ))
            })
        });
    }
    g.finish();
}

/// Cache-hit pairs on `threads` threads, each on its own stream: the time
/// reported is wall time ÷ all pairs (so 2 threads scaling perfectly report
/// half of 1 thread's time).
fn cache_hit_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/cache_hit_pair_aggregate");
    for threads in [1usize, 2] {
        let a = CachingAllocator::new(SimBackend::new(64 << 30), Config::default());
        for t in 0..threads {
            drop(a.allocate(4096, SimStream(t as u32)).unwrap());
        }
        g.bench_function(format!("{threads}_threads_4KiB"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                std::thread::scope(|s| {
                    for th in 0..threads {
                        let a = &a;
                        s.spawn(move || {
                            for _ in 0..iters / threads as u64 {
                                drop(black_box(
                                    a.allocate(black_box(4096), SimStream(th as u32)).unwrap(),
                                ));
                            }
                        });
                    }
                });
                t.elapsed()
            })
        });
    }
    g.finish();
}

/// The floor exact global statistics put under any sharding of the engine:
/// per alloc+free pair, the least a shared exact counter with an exact peak
/// needs (current += n, peak = max(peak, current), current -= n: three
/// atomic read-modify-writes on one shared cache line), on 1 and 2 threads,
/// timed per pair of the aggregate; beside it the same work on a counter per
/// thread (cache-line padded: nothing shared), to show what the machine
/// gives two threads when nothing is shared.
fn shared_stats_floor(c: &mut Criterion) {
    use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
    #[repr(align(128))]
    #[derive(Default)]
    struct Line {
        current: AtomicI64,
        peak: AtomicI64,
    }
    let mut g = c.benchmark_group("engine/stats_floor_pair_aggregate");
    for (name, threads, shared) in [
        ("1_thread", 1usize, true),
        ("2_threads_shared_line", 2, true),
        ("2_threads_own_line", 2, false),
    ] {
        let lines: Vec<Line> = (0..2).map(|_| Line::default()).collect();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                std::thread::scope(|s| {
                    for th in 0..threads {
                        let line = &lines[if shared { 0 } else { th }];
                        s.spawn(move || {
                            for _ in 0..iters / threads as u64 {
                                let n = black_box(4096);
                                let now = line.current.fetch_add(n, Relaxed) + n;
                                line.peak.fetch_max(now, Relaxed);
                                line.current.fetch_sub(n, Relaxed);
                            }
                        });
                    }
                });
                t.elapsed()
            })
        });
    }
    g.finish();
}

/// RMM's random_allocations: `n` ops, 73 % allocate (uniform size up to
/// `max`), 27 % free a random live buffer; allocations that would pass `cap`
/// free first.
fn random_allocations(
    a: &CachingAllocator<SimBackend>,
    stream: SimStream,
    seed: u64,
    n: usize,
    max: usize,
    cap: usize,
) {
    let mut x = seed | 1;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut live: Vec<DeviceBuffer<'_, SimBackend>> = Vec::with_capacity(n);
    let mut bytes = 0usize;
    for _ in 0..n {
        let r = rnd();
        if r % 100 < 73 {
            let size = (rnd() as usize % max) + 1;
            while bytes + size > cap && !live.is_empty() {
                let b = live.swap_remove(rnd() as usize % live.len());
                bytes -= b.len();
            }
            if let Ok(b) = a.allocate(size, stream) {
                bytes += b.len();
                live.push(b);
            }
        } else if !live.is_empty() {
            let b = live.swap_remove(rnd() as usize % live.len());
            bytes -= b.len();
        }
    }
}

fn random(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/random_allocations");
    g.sample_size(20);
    const OPS: usize = 10_000;
    for threads in [1usize, 2] {
        g.bench_function(
            format!("{threads}_threads_10k_ops_max_4MiB_cap_1GiB"),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let a = CachingAllocator::new(SimBackend::new(64 << 30), Config::default());
                        let t = Instant::now();
                        std::thread::scope(|s| {
                            for th in 0..threads {
                                let a = &a;
                                s.spawn(move || {
                                    random_allocations(
                                        a,
                                        SimStream(th as u32),
                                        i * 31 + th as u64,
                                        OPS,
                                        4 * MIB,
                                        (1 << 30) / threads,
                                    )
                                });
                            }
                        });
                        total += t.elapsed();
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    cache_hit,
    cache_hit_threads,
    shared_stats_floor,
    random
);
criterion_main!(benches);
