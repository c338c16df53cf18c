//! Threads that exit before their first flush: every charge reaches the
//! totals. One test: it reads process-wide figures.

use alloc_host::{ScopeBuilder, TrackingAllocator, process_stats};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

#[test]
fn threads_that_exit_unflushed_lose_nothing() {
    const THREADS: usize = 200;
    const BOXES: usize = 50;
    let before = process_stats();
    let request = ScopeBuilder::new("request").build().unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let h = request.clone();
            std::thread::spawn(move || {
                // `black_box`: an allocation whose block is never used may be
                // optimised away (the test then measured nothing when built
                // with optimisations, as under the sanitizers).
                if i % 2 == 0 {
                    // Never enters a scope: charges go to the process root.
                    for _ in 0..BOXES {
                        std::hint::black_box(Box::leak(Box::new([0u8; 64])));
                    }
                } else {
                    // Exits while still inside the scope (guard forgotten).
                    let g = h.enter();
                    for _ in 0..BOXES {
                        std::hint::black_box(Box::leak(Box::new([0u8; 64])));
                    }
                    std::mem::forget(g);
                }
            })
        })
        .collect();
    for t in handles {
        t.join().unwrap();
    }
    let after = process_stats();
    let leaked = (THREADS * BOXES * 64) as u64;
    assert_eq!(
        after.live_bytes - before.live_bytes,
        leaked,
        "before {before:?}\nafter {after:?}"
    );
    assert!(after.allocations - before.allocations >= (THREADS * BOXES) as u64);
    let r = request.stats();
    assert_eq!(r.allocations, (THREADS / 2 * BOXES) as u64, "{r:?}");
    assert_eq!(r.live_bytes, (THREADS / 2 * BOXES * 64) as u64);
}
