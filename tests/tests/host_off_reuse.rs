//! Blocks allocated while tracking is off reuse the addresses (and, for
//! exact class sizes, the side-table entries) of freed tracked blocks: their
//! frees must read "untracked", never the previous block's owner. The side
//! table is not written on the off path (host:O1: an entry is 0 unless a
//! tracked live block holds it; a free zeroes it), the slack is (0). One test
//! in this binary: it switches tracking for the whole process.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

use alloc_host::{TrackingAllocator, scope, set_tracking};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

/// Exact class sizes (owner in the side table) and sizes with slack, small,
/// medium and huge.
const SIZES: [usize; 12] = [
    8,
    16,
    64,
    100,
    1000,
    1024,
    2048,
    4096,
    5000,
    65_536,
    70_000,
    1 << 20,
];

#[test]
fn blocks_allocated_while_off_are_never_charged_to_a_previous_owner() {
    let g = scope("reuse");
    for round in 0..50 {
        for &size in &SIZES {
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: non-zero layouts; every block is freed once with its layout.
            unsafe {
                // A tracked block, freed: its owner id was kept for its address.
                let p = A.alloc(layout);
                black_box(p);
                A.dealloc(p, layout);
                // The same address (mimalloc reuses the last freed block of a
                // class first), allocated while off, freed while on.
                set_tracking(false);
                let q = A.alloc(layout);
                set_tracking(true);
                black_box(q);
                A.dealloc(q, layout);
                // And reallocated while on, from a block allocated while off.
                set_tracking(false);
                let r = A.alloc(layout);
                set_tracking(true);
                let r = A.realloc(r, layout, size + 24);
                A.dealloc(r, Layout::from_size_align(size + 24, 8).unwrap());
            }
            let s = g.stats();
            assert_eq!(
                (s.allocations, s.frees, s.live_bytes),
                (
                    (round * SIZES.len() + SIZES.iter().position(|&x| x == size).unwrap() + 1)
                        as u64,
                    (round * SIZES.len() + SIZES.iter().position(|&x| x == size).unwrap() + 1)
                        as u64,
                    0
                ),
                "round {round}, size {size}: a free of a block allocated while off was charged \
                 to the scope (or a tracked free was lost): {s:?}"
            );
        }
    }
    drop(g);
    alloc_host::flush();
    assert_eq!(alloc_scope::validate(), Ok(()));
}
