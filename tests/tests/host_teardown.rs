//! Allocation inside thread-local destructors: nothing crashes, nothing is
//! lost. The tracker's exit hook (a pthread key destructor) runs after every
//! thread-local destructor, so the late blocks are charged to the scope the
//! thread was in (here the process root) and reach the totals when the thread
//! exits; `unattributed` stays untouched. Runs without the test harness so that
//! no other thread allocates meanwhile.

use std::cell::RefCell;
use std::sync::Mutex;

use alloc_host::{ScopeBuilder, ScopeHandle, TrackingAllocator};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

static LATE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

struct AllocatesOnDrop(RefCell<Vec<u8>>);

impl Drop for AllocatesOnDrop {
    fn drop(&mut self) {
        let scratch = vec![1u8; 333];
        drop(scratch);
        let kept = vec![2u8; 777];
        if let Ok(mut late) = LATE.lock() {
            late.push(kept);
        }
        self.0.borrow_mut().clear();
    }
}

thread_local! {
    static NOISY: AllocatesOnDrop = const { AllocatesOnDrop(RefCell::new(Vec::new())) };
}

fn main() {
    LATE.lock().unwrap().reserve(16);
    let before = ScopeHandle::root().stats();
    let unattributed_before = unattributed();
    let work = ScopeBuilder::new("worker").build().unwrap();
    let h = work.clone();
    std::thread::spawn(move || {
        // Registered before the tracker's exit hook, so it is destroyed after it
        // (thread-local destructors run in reverse order of registration).
        NOISY.with(|n| n.0.borrow_mut().push(1));
        let _in = h.enter();
        let v = vec![0u8; 4096];
        drop(v);
    })
    .join()
    .unwrap();
    let w = work.stats();
    assert_eq!((w.allocations, w.frees, w.live_bytes), (1, 1, 0));
    let late: Vec<Vec<u8>> = std::mem::take(&mut *LATE.lock().unwrap());
    assert_eq!(late.len(), 1);
    let u = unattributed();
    assert_eq!(
        (u.allocations, u.bytes_allocated, u.live_bytes),
        (
            unattributed_before.allocations,
            unattributed_before.bytes_allocated,
            unattributed_before.live_bytes
        ),
        "nothing should reach `unattributed`"
    );
    // The destructor's 333 B came and went, its 777 B are live and the
    // process root holds them: exactly, the thread's other blocks were freed.
    let mid = ScopeHandle::root().stats();
    assert_eq!(mid.live_bytes - before.live_bytes, 777, "{mid:?}");
    let late_buffer = (late.capacity() * std::mem::size_of::<Vec<u8>>()) as u64;
    drop(late); // the 777 B and LATE's reserved buffer, taken out of LATE
    let after = ScopeHandle::root().stats();
    assert_eq!(after.live_bytes, before.live_bytes - late_buffer);
    assert!(after.allocations >= before.allocations + 3);
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn unattributed() -> alloc_host::ScopeStats {
    alloc_host::scope_tree()
        .scopes
        .into_iter()
        .find(|n| n.stats.name == "unattributed")
        .map(|n| n.stats)
        .expect("the unattributed bucket is always in the tree")
}
