//! Host allocator overhead: alloc+free pairs of 16 B to 64 KiB and realloc
//! growth, at 1 and 2 threads, for the system allocator, bare mimalloc, and
//! alloc-host with tracking off, on without a scope, and with a scope at depth 1
//! and 4. The allocators are called directly (not installed), so one binary
//! measures all of them. Also the cost of a scope: `scope/open+close`
//! (`alloc_host::scope("r")` and its drop) and `scope/open+alloc64+close` (the
//! same with one 64 B alloc+free through alloc-host inside), each at the top
//! level and inside an entered parent scope.
//!
//! Run: `cargo bench -p alloc-benches --bench host` (only the scope cost:
//! `cargo bench -p alloc-benches --bench host -- scope/`)

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use alloc_host::{ScopeBuilder, ScopeHandle, TrackingAllocator};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mimalloc::MiMalloc;

static TRACK: TrackingAllocator = TrackingAllocator::new();
const SIZES: [usize; 6] = [16, 64, 256, 1024, 4096, 65536];

#[derive(Clone, Copy)]
enum Variant {
    System,
    Mimalloc,
    Off,
    Root,
    Depth(usize),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::System => "system".into(),
            Variant::Mimalloc => "mimalloc".into(),
            Variant::Off => "ours-off".into(),
            Variant::Root => "ours-root".into(),
            Variant::Depth(d) => format!("ours-depth{d}"),
        }
    }

    /// The scope to enter for this variant: a chain of `d` nested scopes.
    fn scope(self) -> Option<ScopeHandle> {
        let Variant::Depth(d) = self else { return None };
        let mut h = ScopeBuilder::new("bench-0").build().ok()?;
        for i in 1..d {
            h = ScopeBuilder::new(&format!("bench-{i}"))
                .child_of(&h)
                .build()
                .ok()?;
        }
        Some(h)
    }
}

const VARIANTS: [Variant; 6] = [
    Variant::System,
    Variant::Mimalloc,
    Variant::Off,
    Variant::Root,
    Variant::Depth(1),
    Variant::Depth(4),
];

#[inline(always)]
fn pair<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: non-zero layout; the block is freed once with the same layout.
    unsafe {
        let p = a.alloc(layout);
        black_box(p);
        a.dealloc(p, layout);
    }
}

#[inline(always)]
fn growth<A: GlobalAlloc>(a: &A) {
    let mut layout = Layout::from_size_align(16, 8).unwrap();
    // SAFETY: each realloc passes the block's current layout; the final block is
    // freed once with its final layout.
    unsafe {
        let mut p = a.alloc(layout);
        while layout.size() < 65536 {
            let new = layout.size() * 2;
            p = a.realloc(p, layout, new);
            layout = Layout::from_size_align(new, 8).unwrap();
        }
        black_box(p);
        a.dealloc(p, layout);
    }
}

fn pairs(v: Variant, iters: u64, layout: Layout) {
    match v {
        Variant::System => (0..iters).for_each(|_| pair(&System, layout)),
        Variant::Mimalloc => (0..iters).for_each(|_| pair(&MiMalloc, layout)),
        _ => (0..iters).for_each(|_| pair(&TRACK, layout)),
    }
}

/// Times `iters` repetitions of `body` on `threads` threads at once (each
/// thread in the variant's scope); returns the slowest thread's time.
fn timed<F>(v: Variant, threads: usize, iters: u64, body: F) -> Duration
where
    F: Fn(Variant, u64) + Send + Copy + 'static,
{
    alloc_host::set_tracking(!matches!(v, Variant::Off));
    let scope = v.scope();
    let start = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (scope, start) = (scope.clone(), start.clone());
            std::thread::spawn(move || {
                let _in = scope.as_ref().map(ScopeHandle::enter);
                body(v, iters / 16); // warm this thread's caches
                start.wait();
                let t = Instant::now();
                body(v, iters);
                t.elapsed()
            })
        })
        .collect();
    let worst = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap();
    alloc_host::set_tracking(true);
    worst
}

fn growth_body(v: Variant, iters: u64) {
    match v {
        Variant::System => (0..iters).for_each(|_| growth(&System)),
        Variant::Mimalloc => (0..iters).for_each(|_| growth(&MiMalloc)),
        _ => (0..iters).for_each(|_| growth(&TRACK)),
    }
}

fn bench(c: &mut Criterion) {
    for threads in [1usize, 2] {
        for size in SIZES {
            let mut g = c.benchmark_group(format!("pair/{threads}t/{size}B"));
            for v in VARIANTS {
                g.bench_function(BenchmarkId::from_parameter(v.name()), |b| {
                    let layout = Layout::from_size_align(size, 8).unwrap();
                    b.iter_custom(|iters| timed(v, threads, iters, move |v, n| pairs(v, n, layout)))
                });
            }
            g.finish();
        }
        let mut g = c.benchmark_group(format!("realloc-growth-16B-to-64KiB/{threads}t"));
        for v in VARIANTS {
            g.bench_function(BenchmarkId::from_parameter(v.name()), |b| {
                b.iter_custom(|iters| timed(v, threads, iters, growth_body))
            });
        }
        g.finish();
    }
}

fn scope_cost(c: &mut Criterion) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    let mut g = c.benchmark_group("scope");
    for parent in [false, true] {
        let p = if parent { "in-parent" } else { "top" };
        let outer = parent.then(|| alloc_host::scope("parent"));
        g.bench_function(format!("open+close/{p}"), |b| {
            b.iter(|| drop(black_box(alloc_host::scope("r"))))
        });
        g.bench_function(format!("open+alloc64+close/{p}"), |b| {
            b.iter(|| {
                let s = alloc_host::scope("r");
                pair(&TRACK, layout);
                drop(s);
            })
        });
        drop(outer);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800))
        .sample_size(20);
    targets = bench, scope_cost
}
criterion_main!(benches);
