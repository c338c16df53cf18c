//! An allocator built with `starting_off` (host:O3): until tracking is first
//! switched on, no block carries an owner, and frees skip reading it. Blocks
//! allocated then must still read as untracked once tracking is on (their
//! slack holds 0 even where the memory held something that looks like an
//! owner id), and once tracking has been on, frees read owners again (also
//! after tracking is switched off). One test in this binary: it switches
//! tracking for the whole process.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

use alloc_host::{TrackingAllocator, scope, set_tracking, tracking_enabled};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new().starting_off();

/// (a request with slack, the whole class it is in): the class-sized block
/// is filled with small integers (what compact owner ids look like) and
/// freed, so that the request after it (mimalloc hands out the last freed
/// block of a class first) finds that pattern in its slack.
const SLACK: [(usize, usize); 4] = [(100, 112), (1000, 1024), (5000, 5120), (200, 224)];

/// Requests whose owner goes to the side table (exact class sizes).
const EXACT: [usize; 5] = [8, 16, 64, 1024, 4096];

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Fills `n` blocks of `class` bytes with `k` (as 32-bit words) and frees
/// them, then allocates `n` blocks of `req` bytes (with `realloc` from 8
/// bytes when `grow`): returns those blocks and how many took the address
/// of a filled block, so that the pattern lies in their slack.
///
/// # Safety
/// The returned blocks are live with `layout(req)`.
unsafe fn over_pattern(
    req: usize,
    class: usize,
    k: u32,
    n: usize,
    grow: bool,
) -> (Vec<*mut u8>, usize) {
    let mut filled = Vec::with_capacity(n);
    // SAFETY: non-zero layouts; each filled block is written within its size
    // and freed once with its layout.
    unsafe {
        for _ in 0..n {
            let e = A.alloc(layout(class));
            assert!(!e.is_null());
            for i in 0..class / 4 {
                e.cast::<u32>().add(i).write_unaligned(k);
            }
            filled.push(e);
        }
        for &e in &filled {
            A.dealloc(e, layout(class));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let q = if grow {
                let r = A.alloc(layout(8));
                A.realloc(r, layout(8), req)
            } else {
                A.alloc(layout(req))
            };
            assert!(!q.is_null());
            out.push(q);
        }
        let hits = out.iter().filter(|q| filled.contains(q)).count();
        (out, hits)
    }
}

#[test]
fn untouched_blocks_read_as_untracked_and_tracking_reads_owners_again() {
    assert!(
        !tracking_enabled(),
        "an allocator built with starting_off starts with tracking off"
    );
    // Untouched: blocks allocated (and reallocated) before tracking was ever on.
    let mut pre: Vec<(*mut u8, Layout)> = Vec::with_capacity(4096);
    let mut reused = [0usize; SLACK.len()];
    let mut regrown = [0usize; SLACK.len()];
    for round in 0..4u32 {
        let k = round + 1;
        for (i, &(req, class)) in SLACK.iter().enumerate() {
            // SAFETY: the blocks are kept in `pre` and freed once below.
            let (qs, hits) = unsafe { over_pattern(req, class, k, 64, false) };
            reused[i] += hits;
            pre.extend(qs.into_iter().map(|q| (q, layout(req))));
            // The same, each block grown by realloc from 8 bytes: the moved
            // block's slack must be written too.
            // SAFETY: as above.
            let (qs, hits) = unsafe { over_pattern(req, class, k, 64, true) };
            regrown[i] += hits;
            pre.extend(qs.into_iter().map(|q| (q, layout(req))));
        }
        for &size in &EXACT {
            // SAFETY: kept in `pre`, freed once below.
            let p = unsafe { A.alloc(layout(size)) };
            assert!(!p.is_null());
            pre.push((black_box(p), layout(size)));
        }
    }
    for (i, (n, m)) in reused.iter().zip(&regrown).enumerate() {
        assert!(
            *n > 0 && *m > 0,
            "request {} never took a filled block of its class ({} bytes): {n} by \
             alloc, {m} by realloc; the pattern in its slack was never tested",
            SLACK[i].0,
            SLACK[i].1
        );
    }
    eprintln!("blocks over the pattern: by alloc {reused:?}, by realloc {regrown:?}");

    set_tracking(true);
    assert!(tracking_enabled());
    let g = scope("after");
    let tracked: Vec<Vec<u8>> = (0..64).map(|i| vec![1u8; 8 + i * 37]).collect();
    let live: u64 = tracked.iter().map(|v| v.capacity() as u64).sum();
    let before = g.stats();
    for &(p, l) in &pre {
        // SAFETY: each block of `pre` is live and freed once, with its layout.
        unsafe { A.dealloc(p, l) };
    }
    drop(pre);
    alloc_host::flush();
    let s = g.stats();
    assert_eq!(
        (s.allocations, s.frees, s.live_bytes),
        (before.allocations, before.frees, before.live_bytes),
        "frees of blocks allocated before tracking was ever on were charged: {s:?}"
    );
    assert!(s.live_bytes >= live, "{s:?}");
    assert_eq!(alloc_scope::validate(), Ok(()));

    // Tracking has been on: switched off now, frees read owners again.
    set_tracking(false);
    let untracked: Vec<Vec<u8>> = (0..64).map(|i| vec![2u8; 8 + i * 37]).collect();
    drop(tracked);
    alloc_host::flush();
    let s2 = g.stats();
    assert_eq!(
        (s2.allocations, s2.frees, s2.live_bytes),
        (s.allocations, s.allocations, 0),
        "frees of tracked blocks with tracking switched off were not charged back: {s2:?}"
    );
    set_tracking(true);
    drop(untracked);
    alloc_host::flush();
    assert_eq!(g.stats().live_bytes, s2.live_bytes);
    drop(g);
    alloc_host::flush();
    assert_eq!(alloc_scope::validate(), Ok(()));
}
