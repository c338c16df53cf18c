//! A realloc the inner allocator refuses (1 PiB) leaves the block as it was:
//! its contents, and its owner wherever it is kept (the slack, the side
//! table, the header), so its free is charged back to the scope that
//! allocated it, and the refusal itself leaves no trace. Exact class sizes
//! keep the owner in the side table, whose entry a realloc takes before the
//! inner call (host:O1): the refusal must put it back, on the fast path
//! (the owner is the thread's current scope) and on the slow one (another
//! scope is current).

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

use alloc_host::{ScopeBuilder, TrackingAllocator};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

/// Exact class sizes (owner in the side table) and sizes with slack, small,
/// medium and huge.
const SIZES: [usize; 14] = [
    8,
    16,
    48,
    64,
    100,
    1000,
    1024,
    2048,
    2560,
    4096,
    5000,
    65_536,
    70_000,
    1 << 20,
];

#[test]
fn a_refused_realloc_keeps_the_owner_and_the_contents() {
    // Alignment 8: owners kept by class; 16 and 64: in the header.
    for align in [8usize, 16, 64] {
        for &size in &SIZES {
            let layout = Layout::from_size_align(size, align).unwrap();
            let owner = ScopeBuilder::new("owner").build().unwrap();
            let other = ScopeBuilder::new("other").build().unwrap();
            let g = owner.enter();
            // SAFETY: a non-zero layout; the block is freed once below with
            // this layout (every realloc of it is refused).
            let p = unsafe { A.alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: `p` holds `size` bytes.
            unsafe { (0..size).for_each(|i| p.add(i).write(i as u8)) };
            // Refused on the fast path (the owner is current) ...
            // SAFETY: a live block of `layout`; 1 PiB is a valid size.
            let q = black_box(unsafe { A.realloc(p, layout, 1 << 50) });
            assert!(q.is_null(), "1 PiB granted");
            drop(g);
            // ... and on the slow path (another scope is current).
            let g = other.enter();
            // SAFETY: as above.
            let q = black_box(unsafe { A.realloc(p, layout, 1 << 50) });
            assert!(q.is_null(), "1 PiB granted");
            // SAFETY: `p` still holds `size` bytes.
            let kept = unsafe { (0..size).all(|i| p.add(i).read() == i as u8) };
            assert!(kept, "size {size}, align {align}: contents changed");
            // Freed while "other" is current: charged back to "owner".
            // SAFETY: the live block of `layout`, freed once.
            unsafe { A.dealloc(p, layout) };
            drop(g);
            alloc_host::flush();
            let (s, o) = (owner.stats(), other.stats());
            assert_eq!(
                (
                    s.allocations,
                    s.frees,
                    s.reallocs,
                    s.live_bytes,
                    s.bytes_allocated,
                    s.peak_bytes
                ),
                (1, 1, 0, 0, size as u64, size as u64),
                "size {size}, align {align}: the owner's figures after two refused reallocs \
                 and a free from another scope: {s:?}"
            );
            assert_eq!(
                (o.allocations, o.frees, o.reallocs, o.live_bytes),
                (0, 0, 0, 0),
                "size {size}, align {align}: the other scope was charged: {o:?}"
            );
        }
    }
    assert_eq!(alloc_scope::validate(), Ok(()));
}
