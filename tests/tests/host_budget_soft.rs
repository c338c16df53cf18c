//! A soft limit records the overshoot and runs its callback outside the
//! allocator, once per scope.
//!
//! The only test of this binary, on purpose. Soft-limit callbacks are
//! process-wide: the next scope entry or exit on any thread runs every callback
//! that is due. With tests beside it on other harness threads (they all open
//! scopes), one of them could run this test's callback between the overshoot
//! and the check that it has not run yet, and the count would read 1 where the
//! test expects 0. Alone in its binary, only this test enters or leaves scopes.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use alloc_host::{ScopeBuilder, TrackingAllocator};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

#[test]
fn a_soft_budget_records_the_overshoot_and_calls_back_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let (c, s) = (calls.clone(), seen.clone());
    let g = ScopeBuilder::new("soft")
        .soft_limit(10_000)
        .on_soft_limit(move |e| {
            c.fetch_add(1, Ordering::SeqCst);
            s.store(e.live_bytes, Ordering::SeqCst);
            assert_eq!(e.name, "soft");
            assert_eq!(e.limit, 10_000);
        })
        .enter()
        .unwrap();
    let a = black_box(vec![0u8; 8_000]);
    assert_eq!(g.stats().soft_limit_exceeded_at, None);
    let b = black_box(vec![0u8; 4_000]);
    assert_eq!(g.stats().soft_limit_exceeded_at, Some(12_000));
    let c2 = black_box(vec![0u8; 1_000]);
    drop((a, b, c2));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "callbacks never run inside the allocator"
    );
    alloc_host::run_budget_callbacks();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(seen.load(Ordering::SeqCst), 13_000);
    drop(g);
    alloc_host::run_budget_callbacks();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "once per scope");
}
