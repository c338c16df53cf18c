//! An allocator built with `starting_off` (host:O3) with the heap profiler
//! sampling every allocation: a sampled block's owner carries the sampled
//! flag, so the allocator is no longer untouched, and every such block
//! leaves the in-use profile when freed (host:S1). One test in this binary:
//! it sets the process's sample rate.

use std::alloc::{GlobalAlloc, Layout};

use alloc_host::{TrackingAllocator, tracking_enabled};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new().starting_off();

/// Side-table and slack places, small and large.
const SIZES: [usize; 8] = [8, 16, 100, 1000, 1024, 4096, 5000, 70_000];

#[test]
fn sampled_blocks_leave_the_profile_with_tracking_never_on() {
    assert!(!tracking_enabled());
    alloc_host::set_sample_rate(1);
    let before = alloc_host::profile::counts().live;
    let mut blocks = [(core::ptr::null_mut::<u8>(), 0usize); 3 * SIZES.len()];
    for (i, &size) in SIZES.iter().enumerate() {
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero layouts; each block is freed once below with the
        // size it has then.
        unsafe {
            blocks[3 * i] = (A.alloc(l), size);
            blocks[3 * i + 1] = (A.alloc_zeroed(l), size);
            let r = A.alloc(l);
            blocks[3 * i + 2] = (A.realloc(r, l, size * 2), size * 2);
        }
    }
    let during = alloc_host::profile::counts().live;
    assert!(
        during >= before + blocks.len(),
        "every allocation is sampled at rate 1: {before} live samples before, {during} now"
    );
    for &(p, size) in &blocks {
        assert!(!p.is_null());
        // SAFETY: each block is live and freed once, with its layout.
        unsafe { A.dealloc(p, Layout::from_size_align(size, 8).unwrap()) };
    }
    let after = alloc_host::profile::counts().live;
    assert!(
        after <= during - blocks.len(),
        "sampled blocks freed with tracking never on stayed in the in-use profile: \
         {during} live samples before the frees, {after} after"
    );
    alloc_host::set_sample_rate(0);
}
