//! Whole-process run under the `tracking-allocator` crate over mimalloc, with a
//! tracker that keeps per-group live bytes (frees charged to the source group),
//! and an allocation group entered on every thread.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use tracking_allocator::{
    AllocationGroupId, AllocationGroupToken, AllocationRegistry, AllocationTracker, Allocator,
};

#[global_allocator]
static A: Allocator<mimalloc::MiMalloc> = Allocator::from_allocator(mimalloc::MiMalloc);

const GROUPS: usize = 64;
static LIVE: [AtomicI64; GROUPS] = [const { AtomicI64::new(0) }; GROUPS];
static ALLOCS: AtomicU64 = AtomicU64::new(0);

struct Live;

impl AllocationTracker for Live {
    fn allocated(&self, _addr: usize, size: usize, _wrapped: usize, group: AllocationGroupId) {
        ALLOCS.fetch_add(1, Relaxed);
        LIVE[group.as_usize().get() % GROUPS].fetch_add(size as i64, Relaxed);
    }

    fn deallocated(
        &self,
        _addr: usize,
        size: usize,
        _wrapped: usize,
        source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
        LIVE[source.as_usize().get() % GROUPS].fetch_sub(size as i64, Relaxed);
    }
}

fn main() {
    use alloc_benches::workload::*;
    let _ = AllocationRegistry::set_global_tracker(Live);
    AllocationRegistry::enable_tracking();
    let threads = threads_from_args();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut token = AllocationGroupToken::register().expect("a group id");
                let _in = token.enter();
                program(0x9E37_79B9 + t as u64)
            })
        })
        .collect();
    let x = workers
        .into_iter()
        .map(|w| w.join().unwrap_or(0))
        .fold(0, |a, b| a ^ b);
    AllocationRegistry::disable_tracking();
    println!("{x}");
    eprintln!("allocations: {}", ALLOCS.load(Relaxed));
}
