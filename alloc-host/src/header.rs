//! The owner header: 8 bytes in front of each block naming the scope that
//! allocated it, so that a free is charged back to that scope.
//!
//! # Layout
//! ```text
//! base (from the inner allocator)          user pointer (returned)
//! |<--------------- h bytes --------------->|<---- size bytes ---->|
//!                               | owner u64 |
//! ```
//! `h = max(8, align)`: the user pointer stays aligned to `align` because the
//! inner block is aligned to `max(8, align)` and `h` is a multiple of `align`.
//! Memory overhead per allocation: 8 B for `align <= 8`, 16 B for 16, `align`
//! bytes above (rare; a 64 KiB-aligned block costs 64 KiB more).
//!
//! Why a header in front rather than a side table: the header moves with the
//! block through the inner allocator's `realloc` (it is inside the inner block),
//! so in-place growth and lazily zeroed pages survive, and the free path reads
//! one word on a line it is about to touch anyway. A side table costs a hash
//! insert and remove on a shared structure per allocation.
//!
//! # Invariants
//! The header keeps [`HostInvariant::H1`] (alignment) and
//! [`HostInvariant::H2`] (the owner word); their definitions are on the
//! variants.

use core::alloc::Layout;

#[cfg(doc)]
use crate::HostInvariant;

/// Bytes of the owner word.
pub(crate) const WORD: usize = 8;

/// Header bytes for a block of alignment `align` (a power of two).
#[inline(always)]
pub(crate) const fn header_size(align: usize) -> usize {
    if align <= WORD { WORD } else { align }
}

/// The inner layout for a user layout and the header size `h`, or `None` when
/// `size + h` overflows or exceeds `isize::MAX` once rounded to the alignment.
#[inline(always)]
pub(crate) fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let align = layout.align();
    let h = header_size(align);
    let size = outer_size(layout.size(), h, align)?;
    // SAFETY: `align.max(WORD)` is a power of two (both are), and `outer_size`
    // checked that `size` rounded up to it does not exceed `isize::MAX`.
    Some((
        unsafe { Layout::from_size_align_unchecked(size, align.max(WORD)) },
        h,
    ))
}

/// The inner layout of a block that [`outer`] accepted at allocation: no checks
/// needed (the `GlobalAlloc` caller passes the same layout back).
#[inline(always)]
pub(crate) fn outer_unchecked(layout: Layout) -> (Layout, usize) {
    let align = layout.align();
    let h = header_size(align);
    // SAFETY: this layout's outer form was valid when the block was allocated
    // (same size and alignment), so the same values are valid now.
    (
        unsafe { Layout::from_size_align_unchecked(layout.size() + h, align.max(WORD)) },
        h,
    )
}

/// The inner size for a user size, or `None` when `size + h` rounded up to
/// `max(8, align)` would exceed `isize::MAX` (the `Layout` rule).
#[inline(always)]
pub(crate) fn outer_size(size: usize, h: usize, align: usize) -> Option<usize> {
    let size = size.checked_add(h)?;
    let a = align.max(WORD);
    if size > isize::MAX as usize - (a - 1) {
        return None;
    }
    Some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_keeps_user_alignment_for_every_power_of_two_up_to_64_kib() {
        let mut align = 1;
        while align <= 1 << 16 {
            let (o, h) = outer(Layout::from_size_align(24, align).unwrap()).unwrap();
            assert_eq!(h % align, 0, "h {h} must be a multiple of align {align}");
            assert!(h >= WORD);
            assert_eq!(o.align(), align.max(WORD));
            assert_eq!(o.size(), 24 + h);
            align <<= 1;
        }
    }

    #[test]
    fn overflowing_sizes_are_refused_not_wrapped() {
        let l = Layout::from_size_align(isize::MAX as usize - 4, 1).unwrap();
        assert!(outer(l).is_none());
        assert!(outer_size(usize::MAX - 3, 8, 8).is_none());
    }
}
