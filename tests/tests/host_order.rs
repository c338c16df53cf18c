//! Guards dropped out of order, and a scope's figures when it was opened in
//! one: the thread is in the most recently entered scope whose guard lives.
//!
//! Every test here reads only its own scopes' figures, so they may run in
//! parallel. The oldest-first case, which checks the whole registry with
//! `validate`, lives in `host_order_validate.rs`: see why there.

use alloc_host::{ScopeGuard, TrackingAllocator, current, scope};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

#[test]
fn a_vec_of_guards_dropped_front_to_back() {
    let outer = scope("outer");
    let mut guards: Vec<ScopeGuard> = Vec::new();
    for i in 0..10 {
        guards.push(scope(&format!("level {i}")));
    }
    let innermost = guards[9].id();
    // Vec drops its elements front to back: oldest first.
    let first_nine: Vec<ScopeGuard> = guards.drain(..9).collect();
    drop(first_nine);
    assert_eq!(current(), innermost);
    let kept = std::hint::black_box(vec![1u8; 64]);
    assert_eq!(guards[0].stats().live_bytes, 64);
    drop(guards);
    assert_eq!(current(), outer.id());
    // Charged to the innermost scope and so to every ancestor, outer included.
    assert_eq!(outer.stats().live_bytes, 64);
    drop(kept);
    assert_eq!(outer.stats().live_bytes, 0);
}

#[test]
fn two_tasks_interleaved_on_one_thread_keep_their_own_figures() {
    let task1 = scope("task 1");
    let h1 = task1.handle();
    let task2 = scope("task 2"); // child of task 1, as opened
    let x = std::hint::black_box(vec![0u8; 1000]); // task 2
    drop(task1); // task 1 suspends first
    let y = std::hint::black_box(vec![0u8; 10]); // still task 2
    assert_eq!(task2.stats().live_bytes, 1010);
    drop(task2);
    let s1 = h1.stats();
    assert_eq!(s1.live_bytes, 1010, "task 2 is task 1's child: {s1:?}");
    drop((x, y));
    assert_eq!(h1.stats().live_bytes, 0);
}
