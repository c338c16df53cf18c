//! Budgets: a hard limit makes allocations fail (try_reserve gets Err). The
//! soft limit's callback is tested alone in `host_budget_soft.rs`: see why
//! there.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloc_host::{ScopeBuilder, TrackingAllocator};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

const MIB: usize = 1 << 20;

#[test]
fn a_hard_budget_makes_try_reserve_fail_and_loses_nothing() {
    let g = ScopeBuilder::new("capped")
        .hard_limit(MIB as u64)
        .enter()
        .unwrap();
    let mut v: Vec<u8> = Vec::new();
    assert!(
        v.try_reserve_exact(2 * MIB).is_err(),
        "2 MiB under a 1 MiB budget"
    );
    // mimalloc alone would grant this; the budget refuses it at once.
    assert!(v.try_reserve_exact(64 << 40).is_err());
    assert!(v.try_reserve_exact(MIB / 2).is_ok());
    v.extend(std::iter::repeat_n(1u8, MIB / 2));
    let mut w: Vec<u8> = Vec::new();
    assert!(
        w.try_reserve_exact(MIB / 2 + 1).is_err(),
        "would exceed by 1 byte"
    );
    assert!(w.try_reserve_exact(MIB / 2).is_ok(), "exactly at the limit");
    // Growth of an existing block is refused too, and the block stays intact.
    assert!(v.try_reserve_exact(MIB).is_err());
    assert!(v.iter().all(|&b| b == 1));
    let s = g.stats();
    assert_eq!(s.refused_allocations, 4);
    assert_eq!(s.live_bytes, MIB as u64);
    assert_eq!(s.peak_bytes, MIB as u64);
    assert_eq!(s.allocations, 2);
    assert_eq!(s.hard_limit, Some(MIB as u64));
}

#[test]
fn a_parents_hard_budget_binds_its_children() {
    let _p = ScopeBuilder::new("parent")
        .hard_limit(MIB as u64)
        .enter()
        .unwrap();
    let c = alloc_host::scope("child");
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve_exact(MIB + 1).is_err());
    assert_eq!(c.stats().allocations, 0);
}

#[test]
fn a_hard_budget_holds_across_threads() {
    let h = ScopeBuilder::new("shared-cap")
        .hard_limit(MIB as u64)
        .build()
        .unwrap();
    let granted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (h, granted) = (h.clone(), granted.clone());
            std::thread::spawn(move || {
                let _in = h.enter();
                let mut v: Vec<u8> = Vec::new();
                if v.try_reserve_exact(300 * 1024).is_ok() {
                    granted.fetch_add(1, Ordering::SeqCst);
                }
                v
            })
        })
        .collect();
    let kept: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        granted.load(Ordering::SeqCst),
        3,
        "3 × 300 KiB fit in 1 MiB, 4 do not"
    );
    let s = h.stats();
    assert_eq!(s.peak_bytes, 3 * 300 * 1024, "{s:?}");
    assert_eq!(s.refused_allocations, 1);
    drop(kept);
}

#[test]
fn a_refused_request_never_makes_a_fitting_one_fail() {
    // One thread keeps asking for 4 MiB under a 1 MiB limit (always refused);
    // another allocates and frees 600 KiB (always fits). A reservation checks
    // the limit before adding, so the refused bytes are never visible.
    let h = ScopeBuilder::new("contended-cap")
        .hard_limit(MIB as u64)
        .build()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (h1, st) = (h.clone(), stop.clone());
    let greedy = std::thread::spawn(move || {
        let _in = h1.enter();
        let mut refused = 0u64;
        while !st.load(Ordering::Relaxed) {
            let mut v: Vec<u8> = Vec::new();
            if v.try_reserve_exact(4 * MIB).is_err() {
                refused += 1;
            }
        }
        refused
    });
    let h2 = h.clone();
    let modest = std::thread::spawn(move || {
        let _in = h2.enter();
        let mut failed = 0u64;
        for _ in 0..20_000 {
            let mut v: Vec<u8> = Vec::new();
            if v.try_reserve_exact(600 * 1024).is_err() {
                failed += 1;
            }
        }
        failed
    });
    let failed = modest.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let refused = greedy.join().unwrap();
    let s = h.stats();
    assert_eq!(failed, 0, "a 600 KiB request that fits was refused");
    assert!(refused > 0);
    assert_eq!(s.refused_allocations, refused);
    assert_eq!(s.peak_bytes, 600 * 1024, "{s:?}");
}

#[test]
fn any_u64_is_a_valid_hard_limit() {
    let g = ScopeBuilder::new("unbounded")
        .hard_limit(u64::MAX)
        .enter()
        .unwrap();
    let b = black_box(Box::new(1u8));
    assert_eq!(g.stats().live_bytes, 1);
    drop(b);
    let g2 = ScopeBuilder::new("huge soft")
        .soft_limit(u64::MAX - 1)
        .hard_limit(u64::MAX)
        .enter()
        .unwrap();
    let v = black_box(vec![0u8; 1000]);
    assert_eq!(g2.stats().soft_limit_exceeded_at, None);
    drop(v);
}

#[test]
fn a_refused_inner_allocation_leaves_no_trace() {
    let g = ScopeBuilder::new("try-reserve").enter().unwrap();
    let mut v: Vec<u8> = Vec::new();
    // mimalloc refuses 1 PiB; no budget is involved.
    assert!(v.try_reserve_exact(1 << 50).is_err());
    let s = g.stats();
    assert_eq!(
        (s.allocations, s.bytes_allocated, s.live_bytes, s.peak_bytes),
        (0, 0, 0, 0),
        "{s:?}"
    );
}
