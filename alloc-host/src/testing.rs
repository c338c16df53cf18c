//! Test helpers: assert that a closure's peak or allocation count stays under a
//! bound (like dhat's heap-usage testing, but cheap enough to leave in a suite).
//!
//! They need a [`TrackingAllocator`](crate::TrackingAllocator) installed as the
//! global allocator of the test binary; without one they panic instead of
//! passing vacuously. Figures are exact when the closure runs on one thread.

use alloc_scope::{ScopeBuilder, ScopeGuard, ScopeStats, format_bytes};

fn require_installed() {
    assert!(
        crate::is_installed(),
        "alloc-host test helpers need `#[global_allocator] static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();` in this test binary"
    );
}

/// Opens a fresh scope or panics with the reason (a full registry would
/// otherwise measure the parent's figures).
#[track_caller]
fn fresh_scope(name: &str) -> ScopeGuard {
    require_installed();
    match ScopeBuilder::new(name).enter() {
        Ok(g) => g,
        Err(e) => panic!("cannot measure `{name}`: {e}"),
    }
}

/// Runs `f` in a fresh scope and returns its result with the scope's figures.
/// Panics when the allocator is not installed or the scope cannot be created.
#[track_caller]
pub fn measure<R>(name: &str, f: impl FnOnce() -> R) -> (R, ScopeStats) {
    let g = fresh_scope(name);
    let r = f();
    let stats = g.stats();
    (r, stats)
}

/// Runs `f` and panics if its host peak exceeded `max_bytes`.
#[track_caller]
pub fn assert_peak_at_most<R>(max_bytes: u64, f: impl FnOnce() -> R) -> R {
    let (r, s) = measure("assert_peak_at_most", f);
    assert!(
        s.peak_bytes <= max_bytes,
        "peak {} ({} B) exceeds the bound {} ({} B); {} allocations, {} allocated in total",
        format_bytes(s.peak_bytes),
        s.peak_bytes,
        format_bytes(max_bytes),
        max_bytes,
        s.allocations,
        format_bytes(s.bytes_allocated)
    );
    r
}

/// Runs `f` and panics if it made more than `max` allocations.
#[track_caller]
pub fn assert_allocations_at_most<R>(max: u64, f: impl FnOnce() -> R) -> R {
    let (r, s) = measure("assert_allocations_at_most", f);
    assert!(
        s.allocations <= max,
        "{} allocations exceed the bound {max} ({} allocated, peak {})",
        s.allocations,
        format_bytes(s.bytes_allocated),
        format_bytes(s.peak_bytes)
    );
    r
}

/// Runs `f` and panics if memory it allocated is still live after it returns
/// (its result is dropped first).
#[track_caller]
pub fn assert_no_leaks<R>(f: impl FnOnce() -> R) {
    let g = fresh_scope("assert_no_leaks");
    drop(f());
    let s = g.stats();
    assert!(
        s.live_bytes == 0 && s.live_allocations == 0,
        "{} in {} blocks allocated inside the closure are still live",
        format_bytes(s.live_bytes),
        s.live_allocations
    );
}
