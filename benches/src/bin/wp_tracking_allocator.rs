//! Whole-process run under the `tracking-allocator` crate over mimalloc, with a
//! tracker that keeps per-group live bytes (frees charged to the source group),
//! an allocation group entered on every thread and a fresh group per request.
//! Usage: `wp_tracking_allocator [THREADS] [WORKLOAD]` (see `workload.rs`).
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use alloc_benches::workload::{Scoper, run_with, threads_from_args, workload_from_args};
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

/// A new group. `AllocationGroupToken::register` returns `None` when two
/// threads race (its id counter and high-water mark are updated separately);
/// the next id succeeds.
fn register() -> AllocationGroupToken {
    loop {
        if let Some(t) = AllocationGroupToken::register() {
            return t;
        }
    }
}

/// A group per thread, and a fresh group per request entered inside it.
struct Groups;

impl Scoper for Groups {
    fn thread<R>(&self, _t: usize, f: impl FnOnce() -> R) -> R {
        let mut token = register();
        let _in = token.enter();
        f()
    }
    fn request<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut token = register();
        let _in = token.enter();
        f()
    }
}

fn main() {
    let _ = AllocationRegistry::set_global_tracker(Live);
    AllocationRegistry::enable_tracking();
    let out = run_with(threads_from_args(), &workload_from_args(), &Groups);
    AllocationRegistry::disable_tracking();
    out.print();
    eprintln!("allocations: {}", ALLOCS.load(Relaxed));
}
