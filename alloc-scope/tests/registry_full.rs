//! A full registry: what an open costs and gets when every record holds a
//! scope, open or closed with memory it still owns (a server whose requests
//! each leave something behind), and where the slots kept by threads for
//! their next scope go (taken when nothing else is left, listed free when
//! the thread exits, never kept by a thread without an exit hook or after
//! its hook ran).
//!
//! The cost is counted, not timed: `RegistryStats::examined` is the number
//! of records an open looked at because no record was listed free.
//!
//! Alone in its binary: it fills the registry.

#![cfg(not(loom))]

use std::sync::mpsc;

use alloc_scope::{CAPACITY, ScopeBuilder, ScopeError, ScopeHandle, flush, registry_stats, scope};

mod common;
use common::{Block, alloc, free};

/// Fills every record not in use with an open scope; returns their handles
/// and the records looked at while no record was listed free.
fn fill() -> (Vec<ScopeHandle>, u64) {
    let before = registry_stats();
    let free_now = CAPACITY - before.in_use;
    let handles: Vec<ScopeHandle> = (0..free_now)
        .map(|i| {
            ScopeBuilder::new("fill")
                .build()
                .unwrap_or_else(|e| panic!("scope {i} of {free_now}: {e}"))
        })
        .collect();
    (handles, registry_stats().examined - before.examined)
}

/// The tests of this binary one at a time: each fills the registry.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` alone, on a thread of its own: a slot the test's thread keeps
/// from its last scope is listed free again when it exits, so the next test
/// starts with no slot kept by a living thread of its own.
fn alone(f: impl FnOnce() + Send + 'static) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::spawn(f).join().unwrap();
}

/// A request scope that leaves one block behind.
fn leave_one(kept: &mut Vec<Block>) {
    let g = scope("leave-one");
    kept.push(alloc(16));
    drop(g);
}

#[test]
fn a_registry_full_of_closed_scopes_recycles_one_record_per_open() {
    alone(a_registry_full_of_closed_scopes_recycles_one_record_per_open_body);
}

fn a_registry_full_of_closed_scopes_recycles_one_record_per_open_body() {
    let mut kept = Vec::new();
    // Fill every record with a closed scope that owns a block, and go on.
    for _ in 0..CAPACITY + 1_000 {
        leave_one(&mut kept);
    }
    let before = registry_stats();
    const MORE: u64 = 4_000;
    for _ in 0..MORE {
        leave_one(&mut kept);
    }
    let after = registry_stats();
    let recycled = after.recycled - before.recycled;
    let examined = after.examined - before.examined;
    assert_eq!(recycled, MORE, "each open recycled one closed scope");
    assert_eq!(after.not_created, before.not_created, "every scope opened");
    // About one record per open: the next closed one after the last
    // recycled. Searching the whole registry is CAPACITY per open.
    assert!(
        examined <= 2 * MORE,
        "{examined} records examined for {MORE} opens ({} per open)",
        examined as f64 / MORE as f64
    );
    kept.into_iter().for_each(free);
    flush();
    // Everything freed: the closed scopes with a block left retire.
    assert!(
        registry_stats().in_use < 100,
        "{:?} after every block was freed",
        registry_stats()
    );
}

#[test]
fn a_slot_kept_by_a_living_thread_is_taken_when_nothing_else_is_left() {
    alone(a_slot_kept_by_a_living_thread_is_taken_when_nothing_else_is_left_body);
}

fn a_slot_kept_by_a_living_thread_is_taken_when_nothing_else_is_left_body() {
    // A thread closes a scope alone (keeping its slot for its next scope)
    // and waits while every other record fills with open scopes.
    let (go, wait) = mpsc::channel::<()>();
    let (ready, is_ready) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        drop(scope("kept-by-a-living-thread"));
        ready.send(()).unwrap();
        wait.recv().unwrap();
    });
    is_ready.recv().unwrap();
    let (handles, _) = fill();
    assert!(
        matches!(
            ScopeBuilder::new("one-more").build(),
            Err(ScopeError::RegistryFull { .. })
        ),
        "every record holds an open scope, {:?}",
        registry_stats()
    );
    drop(handles);
    go.send(()).unwrap();
    t.join().unwrap();
}

#[test]
fn a_slot_kept_by_a_thread_that_exited_is_listed_free_again() {
    alone(a_slot_kept_by_a_thread_that_exited_is_listed_free_again_body);
}

fn a_slot_kept_by_a_thread_that_exited_is_listed_free_again_body() {
    // One thread enters and leaves a scope; another only builds and drops
    // a handle (it never enters, so it has no exit hook to list a kept
    // slot free: it must not keep one).
    std::thread::spawn(|| drop(scope("kept-by-a-thread")))
        .join()
        .unwrap();
    std::thread::spawn(|| drop(ScopeBuilder::new("handle-only").build().unwrap()))
        .join()
        .unwrap();
    let (handles, examined) = fill();
    assert_eq!(
        examined, 0,
        "every record came from the free list or was never used: no search"
    );
    assert_eq!(registry_stats().in_use, CAPACITY);
    assert!(
        matches!(
            ScopeBuilder::new("one-more").build(),
            Err(ScopeError::RegistryFull { .. })
        ),
        "every slot holds a scope"
    );
    drop(handles);
    drop(scope("after-the-fill"));
}

#[cfg(target_os = "linux")]
#[test]
fn a_scope_closed_after_its_threads_exit_hook_ran_keeps_no_slot() {
    alone(a_scope_closed_after_its_threads_exit_hook_ran_keeps_no_slot_body);
}

/// Drops the `ScopeHandle` boxed at `p`: a pthread key's destructor.
#[cfg(target_os = "linux")]
extern "C" fn drop_handle(p: *mut libc::c_void) {
    // SAFETY: `p` is the `Box<ScopeHandle>` leaked below, handed to this
    // destructor once.
    drop(unsafe { Box::from_raw(p.cast::<ScopeHandle>()) });
}

#[cfg(target_os = "linux")]
fn a_scope_closed_after_its_threads_exit_hook_ran_keeps_no_slot_body() {
    std::thread::spawn(|| {
        // Entering a scope attaches the thread's exit hook (a pthread key
        // made before the one below: glibc runs key destructors in the
        // order the keys were made).
        drop(scope("hooked"));
        let h = Box::new(ScopeBuilder::new("closed-after-the-hook").build().unwrap());
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: a fresh key with a destructor that takes the value set
        // below; the value is a leaked box, taken back once by it.
        unsafe {
            assert_eq!(libc::pthread_key_create(&mut key, Some(drop_handle)), 0);
            assert_eq!(libc::pthread_setspecific(key, Box::into_raw(h).cast()), 0);
        }
    })
    .join()
    .unwrap();
    let (handles, examined) = fill();
    assert_eq!(
        examined, 0,
        "the scope closed after the exit hook listed its slot free: no search"
    );
    drop(handles);
}
