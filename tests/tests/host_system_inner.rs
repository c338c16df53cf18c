//! The tracking allocator wrapped around the system allocator.

use std::alloc::System;
use std::hint::black_box;

use alloc_host::{TrackingAllocator, scope};

#[global_allocator]
static A: TrackingAllocator<System> = TrackingAllocator::with_inner(System);

#[test]
fn system_inner_charges_and_reallocates() {
    let g = scope("system");
    let mut v = black_box(vec![1u32; 100]);
    v.extend(0..10_000);
    let z = black_box(vec![0u64; 4096]);
    assert!(z.iter().all(|&x| x == 0));
    let s = g.stats();
    assert_eq!(s.allocations, 2);
    assert!(s.reallocs >= 1);
    assert_eq!(s.live_bytes, (v.capacity() * 4 + 4096 * 8) as u64);
    drop((v, z));
    assert_eq!(g.stats().live_bytes, 0);
}
