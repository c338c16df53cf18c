//! mimalloc's size classes, computed here so that the owner of a block can be
//! kept in the block's own slack or in a per-class side table (see
//! `owner.rs`), and a process-wide check that they are the classes the linked
//! mimalloc uses.
//!
//! # Invariants
//! The classes keep [`HostInvariant::K1`] (classes are mimalloc's),
//! [`HostInvariant::K2`] (huge blocks, above [`MEDIUM_MAX`]) and
//! [`HostInvariant::K3`] (the placement is decided once, by `mode`); their
//! definitions are on the variants.

#[cfg(doc)]
use crate::HostInvariant;

/// Largest size mimalloc serves from its size-class bins (64 KiB on 64-bit).
pub(crate) const MEDIUM_MAX: usize = 64 << 10;
/// Distinct addresses of blocks above [`MEDIUM_MAX`] are at least this far
/// apart (each is larger than it), which keys their side table.
pub(crate) const HUGE_SHIFT: u32 = 16;
/// `1 << HUGE_SHIFT`.
#[cfg(test)]
pub(crate) const HUGE_GRANULE: usize = 1 << HUGE_SHIFT;
/// Bin numbers are below this (bin 0 is unused; bins up to 48 hold sizes up to
/// [`MEDIUM_MAX`]; [`HUGE_BIN`] is the table of blocks above it).
pub(crate) const BINS: usize = 50;
/// The side-table bin of blocks above [`MEDIUM_MAX`].
pub(crate) const HUGE_BIN: usize = BINS - 1;

/// A size class: its bin number and block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Class {
    pub bin: usize,
    pub size: usize,
}

/// The class of a request of `size` bytes (alignment up to 16), or `None` past
/// `isize::MAX`. Sizes up to 1 KiB (nearly all requests) are one table lookup.
#[inline(always)]
pub(crate) fn class(size: usize) -> Option<Class> {
    if size <= SMALL_MAX {
        let bin = SMALL_BIN[size.div_ceil(8)] as usize;
        return Some(Class {
            bin,
            size: BIN_SIZE[bin] as usize,
        });
    }
    class_large(size)
}

#[cold]
#[inline(never)]
fn class_large(size: usize) -> Option<Class> {
    if size > MEDIUM_MAX {
        let rounded = size.checked_add(4095)? & !4095;
        return Some(Class {
            bin: HUGE_BIN,
            size: rounded,
        });
    }
    let bin = bin_of(size);
    Some(Class {
        bin,
        size: BIN_SIZE[bin] as usize,
    })
}

/// Sizes served by the [`SMALL_BIN`] table.
const SMALL_MAX: usize = 1024;

/// mimalloc's `mi_bin` for `size <= MEDIUM_MAX` (word size rounded to double
/// words up to 8 words, then 4 bins per power of two).
const fn bin_of(size: usize) -> usize {
    let wsize = size.div_ceil(8);
    if wsize <= 8 {
        // `MI_ALIGN2W` (mimalloc's maximum alignment is 16 bytes): 8, 16, 32, 48, 64.
        return if wsize <= 1 { 1 } else { (wsize + 1) & !1 };
    }
    let w = wsize - 1;
    let b = (usize::BITS - 1 - w.leading_zeros()) as usize;
    let t = (w >> (b - 2)) & 3;
    (b << 2) + t - 3
}

/// Block size of a bin below [`HUGE_BIN`].
const fn bin_size(bin: usize) -> usize {
    if bin <= 8 {
        return bin * 8;
    }
    // Inverse of `bin_of`: bin = 4b + t - 3 holds words up to (5 + t) << (b - 2).
    let b = (bin + 3) >> 2;
    let t = (bin + 3) & 3;
    ((5 + t) << (b - 2)) * 8
}

/// Bin of each word count up to `SMALL_MAX / 8`.
static SMALL_BIN: [u8; SMALL_MAX / 8 + 1] = {
    let mut t = [0u8; SMALL_MAX / 8 + 1];
    let mut w = 0;
    while w <= SMALL_MAX / 8 {
        t[w] = bin_of(if w == 0 { 1 } else { w * 8 }) as u8;
        w += 1;
    }
    t
};

/// Block size of each bin (0 for unused bins and [`HUGE_BIN`]).
pub(crate) static BIN_SIZE: [u32; BINS] = {
    let mut t = [0u32; BINS];
    let mut s = 8;
    while s <= MEDIUM_MAX {
        let b = bin_of(s);
        t[b] = bin_size(b) as u32;
        s += 8;
    }
    t
};

/// How owners are kept, decided once per process ([`HostInvariant::K3`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// In the block's slack, or the per-class side table.
    Classes,
    /// In an 8-byte header in front of each block.
    Header,
}

#[cfg(feature = "mimalloc")]
mod detect {
    use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

    use super::{MEDIUM_MAX, Mode, class};

    static MODE: AtomicU8 = AtomicU8::new(0);

    /// The placement for blocks of the mimalloc inner allocator (host:K3):
    /// checks host:K1 on the linked mimalloc the first time. No allocation.
    #[inline(always)]
    pub(crate) fn mode() -> Mode {
        match MODE.load(Relaxed) {
            1 => Mode::Classes,
            2 => Mode::Header,
            _ => decide(),
        }
    }

    #[cold]
    fn decide() -> Mode {
        let ok = [
            1usize, 8, 9, 16, 17, 24, 64, 65, 72, 100, 128, 129, 1000, 1024, 1025, 4096, 5000,
            65_536, 8191, MEDIUM_MAX,
        ]
        .iter()
        // SAFETY: mi_good_size only computes; it accepts any size.
        .all(|&s| class(s).map(|c| c.size) == Some(unsafe { libmimalloc_sys::mi_good_size(s) }));
        let m = if ok { 1 } else { 2 };
        // The first thread to decide wins; every thread then sees one mode.
        match MODE.compare_exchange(0, m, Relaxed, Relaxed) {
            Ok(_) => {
                if ok {
                    Mode::Classes
                } else {
                    Mode::Header
                }
            }
            Err(1) => Mode::Classes,
            Err(_) => Mode::Header,
        }
    }
}

#[cfg(feature = "mimalloc")]
pub(crate) use detect::mode;

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;
    use libmimalloc_sys as ffi;

    #[test]
    fn classes_are_mimallocs_for_every_size_up_to_the_medium_limit() {
        for s in 1..=MEDIUM_MAX {
            let c = class(s).unwrap();
            // SAFETY: mi_good_size only computes.
            let good = unsafe { ffi::mi_good_size(s) };
            assert_eq!(c.size, good, "size {s}");
            assert!(c.bin > 0 && c.bin < HUGE_BIN, "bin {} of size {s}", c.bin);
        }
        assert_eq!(mode(), Mode::Classes);
    }

    #[test]
    fn each_bin_holds_one_block_size() {
        let mut size_of_bin = [0usize; BINS];
        for s in 1..=MEDIUM_MAX {
            let c = class(s).unwrap();
            assert!(
                size_of_bin[c.bin] == 0 || size_of_bin[c.bin] == c.size,
                "bin {}",
                c.bin
            );
            size_of_bin[c.bin] = c.size;
        }
    }

    #[test]
    fn real_blocks_have_at_least_their_class_usable() {
        let mut sizes: Vec<usize> = (1..=4096).collect();
        sizes.extend((4097..=MEDIUM_MAX * 4).step_by(977));
        sizes.extend([
            HUGE_GRANULE,
            1 << 20,
            (1 << 20) + 1,
            3 << 20,
            17 << 20,
            (64 << 20) + 5,
        ]);
        for s in sizes {
            // SAFETY: plain mimalloc allocation and free of a live block.
            unsafe {
                let p = ffi::mi_malloc(s);
                assert!(!p.is_null());
                let usable = ffi::mi_usable_size(p);
                let c = class(s).unwrap().size;
                assert!(usable >= c, "size {s}: usable {usable} < class {c}");
                if s > MEDIUM_MAX {
                    assert_eq!(p as usize % 4096, 0, "huge blocks are page-aligned");
                }
                ffi::mi_free(p);
            }
        }
    }
}
