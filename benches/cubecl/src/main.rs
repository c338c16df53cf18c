//! Side by side: the engine (`alloc_core::CachingAllocator<SimBackend>`) and
//! cubecl's `MemoryManagement<BytesStorage>` on the workloads of
//! `benches/benches/engine.rs`: a cache-hit alloc+free pair (4 KiB and 8 MiB)
//! and RMM's random_allocations (73 % allocate, uniform sizes up to 4 MiB, a
//! 1 GiB cap on live bytes), on 1 and 2 threads.
//!
//! cubecl's memory management takes `&mut self`, so with 2 threads it sits
//! behind a `Mutex` (the engine has one lock inside). A cubecl buffer is freed
//! by dropping its handle; the pool sees it on its next reservation.
//!
//! cubecl runs on its `BytesStorage` (real, zeroed host memory) and on
//! `NullStorage` below (no memory, like `SimBackend`).
//!
//! Plain `std::time::Instant` timing, medians over samples; run with
//! `cargo run --release -- [samples]` from this directory (21 by default).

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};
use cubecl_ir::MemoryDeviceProperties;
use cubecl_server::logging::ServerLogger;
use cubecl_server::memory_management::{
    Cleanup, ErrorGraph, ManagedMemoryHandle, MemoryConfiguration, MemoryManagement,
    MemoryManagementOptions, PageUpdate,
};
use cubecl_server::server::IoError;
use cubecl_server::storage::{
    BytesStorage, ComputeStorage, StorageHandle, StorageId, StorageUtilization,
};

const MIB: usize = 1 << 20;
const OPS: usize = 10_000;

type Cubecl = MemoryManagement<BytesStorage>;

fn cubecl() -> Cubecl {
    // As cubecl's own benches/dynamic.rs: 2 GiB max page, 32 B alignment,
    // default (adaptive) configuration.
    MemoryManagement::from_configuration(
        BytesStorage::default(),
        &MemoryDeviceProperties::new(2048 * MIB as u64, 32),
        MemoryConfiguration::default(),
        Arc::new(ServerLogger::default()),
        MemoryManagementOptions::new("bench"),
    )
}

/// A storage that holds no memory (the counterpart of `SimBackend`): ids and
/// sizes only, so the figures with it are the pool logic alone.
#[derive(Default)]
struct NullStorage {
    sizes: std::collections::HashMap<StorageId, u64>,
    allocated: u64,
}

/// Storage allocations made by every `NullStorage`.
static NULL_ALLOCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl ComputeStorage for NullStorage {
    type Resource = u64;

    fn alignment(&self) -> usize {
        32
    }

    fn get(&mut self, _handle: &StorageHandle) -> Result<u64, IoError> {
        Ok(0)
    }

    fn alloc(&mut self, size: u64) -> Result<StorageHandle, IoError> {
        NULL_ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = StorageId::new();
        self.sizes.insert(id, size);
        self.allocated += size;
        Ok(StorageHandle {
            id,
            utilization: StorageUtilization { offset: 0, size },
        })
    }

    fn dealloc(&mut self, id: StorageId) {
        if let Some(size) = self.sizes.remove(&id) {
            self.allocated -= size;
        }
    }

    fn flush(&mut self) {}

    fn bytes_allocated(&self) -> u64 {
        self.allocated
    }
}

fn cubecl_null() -> MemoryManagement<NullStorage> {
    MemoryManagement::from_configuration(
        NullStorage::default(),
        &MemoryDeviceProperties::new(2048 * MIB as u64, 32),
        MemoryConfiguration::default(),
        Arc::new(ServerLogger::default()),
        MemoryManagementOptions::new("bench-null"),
    )
}

fn engine() -> CachingAllocator<SimBackend> {
    CachingAllocator::new(SimBackend::new(64 << 30), Config::default())
}

fn cubecl_reserve<S: ComputeStorage>(
    mm: &mut MemoryManagement<S>,
    size: usize,
) -> Option<ManagedMemoryHandle> {
    mm.reserve(size as u64, PageUpdate::Allow, &mut ErrorGraph::default())
        .ok()
}

/// Returns every page to the storage (all handles are gone by then).
fn give_back<S: ComputeStorage>(mm: &mut MemoryManagement<S>) {
    mm.cleanup(Cleanup::Explicit, &mut ErrorGraph::default());
    let left = mm.storage().bytes_allocated();
    if left != 0 {
        eprintln!("cubecl storage still holds {left} B after an explicit cleanup");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// ns per pair: median over `samples` batches of `pairs` alloc+free pairs.
fn time_pairs(samples: usize, pairs: usize, mut pair: impl FnMut()) -> f64 {
    for _ in 0..pairs {
        pair();
    }
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..pairs {
            pair();
        }
        v.push(t.elapsed().as_nanos() as f64 / pairs as f64);
    }
    median(v)
}

/// xorshift64, as in `benches/benches/engine.rs`.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }
}

/// RMM's random_allocations: `n` ops, 73 % allocate (uniform size up to
/// `max`), 27 % free a random live buffer; an allocation that would pass
/// `cap` live (requested) bytes frees first. `alloc` returns the buffer or
/// `None` on failure; the same seed gives both allocators the same requests.
fn random_allocations<T>(
    seed: u64,
    n: usize,
    max: usize,
    cap: usize,
    mut alloc: impl FnMut(usize) -> Option<T>,
) -> usize {
    let mut r = Rng(seed | 1);
    let mut live: Vec<(T, usize)> = Vec::with_capacity(n);
    let mut bytes = 0usize;
    let mut failed = 0;
    for _ in 0..n {
        if r.next() % 100 < 73 {
            let size = (r.next() as usize % max) + 1;
            while bytes + size > cap && !live.is_empty() {
                let i = r.next() as usize % live.len();
                bytes -= live.swap_remove(i).1;
            }
            match alloc(size) {
                Some(b) => {
                    bytes += size;
                    live.push((b, size));
                }
                None => failed += 1,
            }
        } else if !live.is_empty() {
            let i = r.next() as usize % live.len();
            bytes -= live.swap_remove(i).1;
        }
    }
    failed
}

/// Median wall time of one run of `threads` × `OPS` ops on a fresh allocator
/// (built before the clock starts, torn down and dropped after it stops:
/// `teardown` gives cubecl's pages back to the storage, which does not free
/// them when dropped), and the number
/// of failed allocations seen in all samples. `run(a, thread, seed, cap)`
/// runs [`random_allocations`] on one thread.
fn time_random<A: Sync>(
    samples: usize,
    threads: usize,
    make: impl Fn() -> A,
    run: impl Fn(&A, usize, u64, usize) -> usize + Sync,
    teardown: impl Fn(&A),
) -> (Duration, usize) {
    let mut v = Vec::with_capacity(samples);
    let mut failed = 0;
    for i in 0..samples as u64 {
        let a = make();
        let t = Instant::now();
        let f: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|th| {
                    let (a, run) = (&a, &run);
                    s.spawn(move || run(a, th, i * 31 + th as u64, (1 << 30) / threads))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        v.push(t.elapsed().as_nanos() as f64);
        failed += f;
        teardown(&a);
        drop(a);
    }
    (Duration::from_nanos(median(v) as u64), failed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let samples: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(21);

    println!("cache-hit alloc+free pair, median ns/pair over {samples} batches of 100,000 pairs");
    println!(
        "| block | engine | cubecl (BytesStorage) | cubecl / engine | cubecl (null storage) | null / engine |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, size) in [("small, 4 KiB", 4096usize), ("large, 8 MiB", 8 * MIB)] {
        let e = engine();
        let te = time_pairs(samples, 100_000, || {
            drop(black_box(
                e.allocate(black_box(size), SimStream(0)).unwrap(),
            ))
        });
        drop(e);
        let mut c = cubecl();
        let tc = time_pairs(samples, 100_000, || {
            drop(black_box(cubecl_reserve(&mut c, black_box(size)).unwrap()))
        });
        drop(c);
        let mut c = cubecl_null();
        let tn = time_pairs(samples, 100_000, || {
            drop(black_box(cubecl_reserve(&mut c, black_box(size)).unwrap()))
        });
        drop(c);
        println!(
            "| {name} | {te:.1} ns | {tc:.1} ns | {:.2} | {tn:.1} ns | {:.2} |",
            tc / te,
            tn / te
        );
    }

    println!();
    println!(
        "random_allocations, {OPS} ops per thread, max 4 MiB, cap 1 GiB in all; \
         median wall time over {samples} runs"
    );
    println!(
        "| threads | engine | cubecl (BytesStorage) | cubecl (null storage) | engine ns/op | cubecl ns/op | null ns/op | cubecl / engine | null / engine | null-storage allocs per run | failed allocs (engine, cubecl, null) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for threads in [1usize, 2] {
        let (te, fe) = time_random(
            samples,
            threads,
            engine,
            |a, th, seed, cap| {
                random_allocations(seed, OPS, 4 * MIB, cap, |size| {
                    a.allocate(size, SimStream(th as u32)).ok()
                })
            },
            |_| {},
        );
        let (tc, fc) = time_random(
            samples,
            threads,
            || Mutex::new(cubecl()),
            |m, _th, seed, cap| {
                random_allocations(seed, OPS, 4 * MIB, cap, |size| {
                    cubecl_reserve(&mut m.lock().unwrap(), size)
                })
            },
            |m| give_back(&mut m.lock().unwrap()),
        );
        let before = NULL_ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
        let (tn, fnull) = time_random(
            samples,
            threads,
            || Mutex::new(cubecl_null()),
            |m, _th, seed, cap| {
                random_allocations(seed, OPS, 4 * MIB, cap, |size| {
                    cubecl_reserve(&mut m.lock().unwrap(), size)
                })
            },
            |m| give_back(&mut m.lock().unwrap()),
        );
        let null_allocs = (NULL_ALLOCS.load(std::sync::atomic::Ordering::Relaxed) - before) as f64
            / samples as f64;
        let ops = (OPS * threads) as f64;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let per_op = |d: Duration| d.as_nanos() as f64 / ops;
        println!(
            "| {threads} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {null_allocs:.0} | {fe}, {fc}, {fnull} |",
            ms(te),
            ms(tc),
            ms(tn),
            per_op(te),
            per_op(tc),
            per_op(tn),
            tc.as_secs_f64() / te.as_secs_f64(),
            tn.as_secs_f64() / te.as_secs_f64()
        );
    }
}
