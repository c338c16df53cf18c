//! Tracking switched off at run time: new blocks are charged nowhere, blocks
//! allocated while on are still charged back when freed.

use std::hint::black_box;

use alloc_host::{TrackingAllocator, scope, set_tracking};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

#[test]
fn off_charges_nothing_new_and_keeps_live_figures_consistent() {
    let g = scope("switch");
    let tracked = black_box(vec![0u8; 1000]);
    set_tracking(false);
    let untracked = black_box(vec![0u8; 5000]);
    drop(tracked);
    let s = g.stats();
    assert_eq!((s.allocations, s.frees, s.live_bytes), (1, 1, 0));
    set_tracking(true);
    drop(untracked);
    let s = g.stats();
    assert_eq!((s.allocations, s.frees, s.live_bytes), (1, 1, 0));
    assert_eq!(s.peak_bytes, 1000);
}
