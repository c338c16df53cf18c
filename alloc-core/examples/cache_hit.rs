//! Times cache-hit alloc+free pairs (small and large pool) on the simulated
//! backend: `cargo run --release -p alloc-core --example cache_hit [PAIRS]`.

use std::hint::black_box;
use std::time::Instant;

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};

fn main() {
    let pairs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    for (name, size) in [("small 4 KiB", 4096usize), ("large 8 MiB", 8 << 20)] {
        let a = CachingAllocator::new(SimBackend::new(64 << 30), Config::default());
        drop(a.allocate(size, SimStream(0)).expect("the device has room"));
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..pairs {
                drop(black_box(
                    a.allocate(black_box(size), SimStream(0))
                        .expect("cache hit"),
                ));
            }
            best = best.min(t.elapsed().as_nanos() as f64 / pairs as f64);
        }
        println!("{name}: {best:.1} ns per alloc+free pair (best of 5 runs of {pairs})");
    }
}
