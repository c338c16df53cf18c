//! Over-aligned layouts (up to 128 KiB) stay aligned and keep their contents
//! through realloc growth and shrinking, and are charged exactly.

use std::alloc::{GlobalAlloc, Layout, alloc, dealloc, realloc};

use alloc_host::{TrackingAllocator, scope};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

fn check(p: *mut u8, align: usize, len: usize, seed: u8) {
    assert!(!p.is_null());
    assert_eq!(p as usize % align, 0, "{p:p} not aligned to {align}");
    for i in 0..len {
        // SAFETY: `p` holds at least `len` initialised bytes.
        assert_eq!(unsafe { *p.add(i) }, seed.wrapping_add(i as u8), "byte {i}");
    }
}

#[test]
fn overaligned_blocks_survive_realloc_and_are_charged_exactly() {
    for shift in [4u32, 6, 12, 16, 17] {
        let align = 1usize << shift;
        let g = scope("aligned");
        let layout = Layout::from_size_align(100, align).unwrap();
        // SAFETY: non-zero size; every pointer is used within its allocation and
        // freed once with the layout it currently has.
        unsafe {
            let p = alloc(layout);
            for i in 0..100 {
                *p.add(i) = 7u8.wrapping_add(i as u8);
            }
            let p = realloc(p, layout, 200_000);
            check(p, align, 100, 7);
            let big = Layout::from_size_align(200_000, align).unwrap();
            let p = realloc(p, big, 50);
            check(p, align, 50, 7);
            let s = g.stats();
            assert_eq!((s.allocations, s.reallocs, s.frees), (1, 2, 0));
            assert_eq!(s.live_bytes, 50);
            assert_eq!(s.peak_bytes, 200_000);
            dealloc(p, Layout::from_size_align(50, align).unwrap());
        }
        let s = g.stats();
        assert_eq!(s.live_bytes, 0, "align {align}");
        assert_eq!(s.bytes_allocated, 200_000);
        assert_eq!(s.bytes_freed, 200_000);
    }
}

#[test]
fn zeroed_overaligned_blocks_are_zero_and_aligned() {
    let layout = Layout::from_size_align(70_000, 1 << 16).unwrap();
    // SAFETY: non-zero size; freed once with the same layout.
    unsafe {
        let p = A.alloc_zeroed(layout);
        assert_eq!(p as usize % (1 << 16), 0);
        assert!((0..70_000).all(|i| *p.add(i) == 0));
        A.dealloc(p, layout);
    }
}

#[test]
fn sizes_that_overflow_with_the_header_get_null_not_a_panic() {
    let layout = Layout::from_size_align(isize::MAX as usize - 2, 1).unwrap();
    // SAFETY: a non-zero layout; null is the expected answer.
    let p = unsafe { A.alloc(layout) };
    assert!(p.is_null());
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(isize::MAX as usize - 2).is_err());
}
