//! `Mimalloc`: the default inner allocator, mimalloc's C API called directly.
//!
//! The `mimalloc` crate's `GlobalAlloc` always calls the aligned entry points
//! (`mi_malloc_aligned`, ...), whose fast path covers only blocks up to 1 KiB;
//! above that every call takes mimalloc's generic aligned path (measured: 277
//! instructions per 2 KiB alloc+free pair against 126 for 1 KiB). mimalloc
//! aligns every block of 16 bytes or more to 16 bytes and smaller ones to 8, so
//! for alignments up to 16 (nearly all Rust layouts) this adaptor calls the
//! plain `mi_malloc_small` (up to 1 KiB) / `mi_malloc` / `mi_zalloc` /
//! `mi_realloc` and keeps the aligned calls for larger alignments.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as ffi;

/// Alignment mimalloc gives every block of at least this many bytes.
const GUARANTEED_ALIGN: usize = 16;

/// mimalloc through its C API (see the module docs for why not `mimalloc::MiMalloc`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Mimalloc;

#[inline(always)]
fn plain(layout: Layout) -> bool {
    let a = layout.align();
    a <= 8 || (a <= GUARANTEED_ALIGN && layout.size() >= GUARANTEED_ALIGN)
}

// SAFETY: every block comes from mimalloc: the plain calls when `plain(layout)`
// (mimalloc aligns blocks of >= 16 bytes to 16 and all blocks to 8), the aligned
// calls otherwise; `mi_free` frees both kinds, and `mi_realloc(_aligned)` keeps
// the contents up to the smaller size.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions accept any size; the `_small`
        // ones only sizes up to MI_SMALL_SIZE_MAX, which the branch checks.
        unsafe {
            if plain(layout) {
                if layout.size() <= ffi::MI_SMALL_SIZE_MAX {
                    ffi::mi_malloc_small(layout.size()).cast()
                } else {
                    ffi::mi_malloc(layout.size()).cast()
                }
            } else {
                ffi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`; mimalloc zeroes (fresh OS pages are not touched).
        unsafe {
            if plain(layout) {
                if layout.size() <= ffi::MI_SMALL_SIZE_MAX {
                    ffi::mi_zalloc_small(layout.size()).cast()
                } else {
                    ffi::mi_zalloc(layout.size()).cast()
                }
            } else {
                ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc contract).
        unsafe { ffi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size`, rounded up to the alignment, does not overflow
        // `isize` (GlobalAlloc::realloc contract), so this is a valid layout;
        // `ptr` came from this allocator; the result is aligned as the layout
        // requires (plain calls only where mimalloc guarantees it).
        unsafe {
            let n = Layout::from_size_align_unchecked(new_size, layout.align());
            if plain(n) && plain(layout) {
                ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_meets_its_alignment_through_alloc_zeroed_and_realloc() {
        for align_shift in 0..13 {
            let align = 1usize << align_shift;
            for size in [1usize, 7, 8, 15, 16, 17, 100, 1000, 1025, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero layouts; each block is freed once with the
                // layout it has at that moment.
                unsafe {
                    let p = Mimalloc.alloc(layout);
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(0xAB, size);
                    let q = Mimalloc.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xAB));
                    Mimalloc.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = Mimalloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    Mimalloc.dealloc(z, layout);
                }
            }
        }
    }
}
