//! While a thread runs inside a scope, another thread reading the scope's
//! figures sees that thread's charges within the documented batching bounds
//! (alloc-scope's thread module: with `T` threads charging a scope, counts
//! lag by at most `T × BATCH_OPS` operations and live bytes are within
//! `(T + 1) × BATCH_BYTES`), at every size placement (side table, slack,
//! page-sized blocks) and in every direction (alloc/free cycles, growth,
//! shrinking). The worker never flushes, leaves its scope or exits between
//! looks: only the batching rule bounds what the reader sees.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Barrier;

use alloc_host::{BATCH_BYTES, BATCH_OPS, ScopeBuilder, TrackingAllocator};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

/// What the worker did, counted by itself.
#[derive(Default, Clone, Copy, Debug)]
struct Truth {
    allocations: u64,
    frees: u64,
    live: i64,
    peak: i64,
}

enum Phase {
    /// `n` alloc+free pairs of `size` bytes.
    Pairs(usize, usize),
    /// `n` blocks of `size` bytes allocated and kept.
    Keep(usize, usize),
    /// Every kept block freed.
    FreeKept,
}

const PHASES: &[Phase] = &[
    Phase::Pairs(10_000, 16),
    Phase::Pairs(10_000, 100),
    Phase::Pairs(3_000, 4096),
    Phase::Keep(2_000, 16),
    Phase::FreeKept,
    Phase::Keep(3_000, 100),
    Phase::FreeKept,
    Phase::Keep(300, 4096),
    Phase::FreeKept,
    Phase::Pairs(777, 24),
];

#[test]
fn a_reader_sees_a_running_threads_charges_within_the_batching_bounds() {
    let handle = ScopeBuilder::new("lag").build().unwrap();
    // Made before the worker enters its scope: nothing below allocates
    // through the scope except the worker's own blocks.
    let done = Barrier::new(2);
    let looked = Barrier::new(2);
    let truths: Vec<std::sync::Mutex<Truth>> = (0..PHASES.len())
        .map(|_| std::sync::Mutex::new(Truth::default()))
        .collect();
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let h = handle.clone();
        let (done, looked, truths) = (&done, &looked, &truths);
        s.spawn(move || {
            let mut kept: Vec<(*mut u8, Layout)> = Vec::with_capacity(4_000);
            let mut t = Truth::default();
            let _in = h.enter();
            for (i, phase) in PHASES.iter().enumerate() {
                // SAFETY: non-zero layouts; every block freed once with its layout.
                unsafe {
                    match *phase {
                        Phase::Pairs(n, size) => {
                            let l = Layout::from_size_align(size, 1).unwrap();
                            for _ in 0..n {
                                let p = A.alloc(l);
                                assert!(!p.is_null());
                                std::hint::black_box(p);
                                A.dealloc(p, l);
                            }
                            t.allocations += n as u64;
                            t.frees += n as u64;
                            t.peak = t.peak.max(t.live + size as i64);
                        }
                        Phase::Keep(n, size) => {
                            let l = Layout::from_size_align(size, 1).unwrap();
                            for _ in 0..n {
                                let p = A.alloc(l);
                                assert!(!p.is_null());
                                kept.push((p, l));
                                t.live += size as i64;
                            }
                            t.allocations += n as u64;
                            t.peak = t.peak.max(t.live);
                        }
                        Phase::FreeKept => {
                            for (p, l) in kept.drain(..) {
                                A.dealloc(p, l);
                                t.frees += 1;
                                t.live -= l.size() as i64;
                            }
                        }
                    }
                }
                *truths[i].lock().unwrap() = t;
                done.wait();
                looked.wait();
            }
        });
        for (i, truth) in truths.iter().enumerate() {
            done.wait();
            let t = *truth.lock().unwrap();
            let s = handle.stats();
            let ops = u64::from(BATCH_OPS);
            let bytes = 2 * BATCH_BYTES;
            let (live, peak) = (s.live_bytes as i64, s.peak_bytes as i64);
            let checks = [
                (s.allocations <= t.allocations, "allocations ahead"),
                (s.allocations + ops >= t.allocations, "allocations lag"),
                (s.frees <= t.frees, "frees ahead"),
                (s.frees + ops >= t.frees, "frees lag"),
                ((live - t.live).abs() <= bytes, "live bytes"),
                (peak <= t.peak, "peak ahead"),
                (peak + bytes >= t.peak, "peak lag"),
            ];
            for (ok, what) in checks {
                if !ok {
                    failures.push(format!("phase {i}: {what}: stats {s:?}, truth {t:?}"));
                }
            }
            // Always let the worker go on (a failure is reported after it
            // finished, never left waiting at the barrier).
            looked.wait();
        }
    });
    assert!(failures.is_empty(), "{failures:#?}");
    // Once the worker is gone its batch is applied: every figure exact.
    let s = handle.stats();
    let t = *truths.last().unwrap().lock().unwrap();
    assert_eq!((s.allocations, s.frees), (t.allocations, t.frees), "{s:?}");
    assert_eq!(s.live_bytes, 0);
    assert_eq!(s.peak_bytes as i64, t.peak);
}
