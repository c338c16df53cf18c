//! Guards dropped oldest first leave the registry intact: scope:C1–C4 hold over the
//! whole scope tree afterwards.
//!
//! The only test of this binary, on purpose. `validate` reads every scope of
//! the process and is meaningful only at quiescence (no thread holds charges
//! half applied). A test running beside it on another harness thread applies
//! its batches to its own scope chain one counter and one ancestor at a time,
//! so `validate` can see a child ahead of its parent (scope:C4) or one counter ahead
//! of another (scope:C1): 5 of 300 parallel runs failed when this test shared
//! `host_order` with two others. A lock taken by every test of a binary would
//! not be enough: a test thread still flushes its charges to the process root
//! after releasing it, and any test added later without the lock would bring
//! the failure back. Alone in its binary, nothing else charges a scope while
//! it runs (the harness's main thread only waits for the result).

use alloc_host::{TrackingAllocator, current, scope};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

#[test]
fn guards_dropped_oldest_first_leave_the_registry_intact() {
    let a = scope("a");
    let b = scope("b");
    let (a_id, b_id) = (a.id(), b.id());
    drop(a);
    assert_eq!(
        current(),
        b_id,
        "dropping the older guard leaves the thread in b"
    );
    drop(b);
    assert_ne!(current(), a_id, "a must never become current again");
    let c = scope("c");
    let v = std::hint::black_box(vec![0u8; 100]);
    let s = c.stats();
    assert_eq!(
        (
            s.allocations,
            s.frees,
            s.bytes_allocated,
            s.bytes_freed,
            s.live_bytes
        ),
        (1, 0, 100, 0, 100),
        "{s:?}"
    );
    drop(v);
    drop(c);
    alloc_scope::validate().unwrap();
}
