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

use core::sync::atomic::AtomicU8;

#[cfg(doc)]
use crate::HostInvariant;

/// Largest size mimalloc serves from its size-class bins (64 KiB on 64-bit).
pub(crate) const MEDIUM_MAX: usize = 64 << 10;
/// Distinct addresses of blocks above [`MEDIUM_MAX`] are at least this far
/// apart (each is larger than it), which keys their side table.
pub(crate) const HUGE_SHIFT: u32 = 16;
/// `1 << HUGE_SHIFT`.
#[cfg(all(test, feature = "mimalloc"))]
pub(crate) const HUGE_GRANULE: usize = 1 << HUGE_SHIFT;
/// Bin numbers are below this (bin 0 is unused; bins up to 48 hold sizes up to
/// [`MEDIUM_MAX`]; [`HUGE_BIN`] is the table of blocks above it).
pub(crate) const BINS: usize = 50;
/// The side-table bin of blocks above [`MEDIUM_MAX`].
pub(crate) const HUGE_BIN: usize = BINS - 1;

/// A size class: its block size, bin number, and the shift that keys its
/// side table (`floor(log2(size))`, [`HUGE_SHIFT`] for huge blocks: distinct
/// blocks of the class are at least `1 << shift` apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Class {
    pub size: usize,
    pub bin: u16,
    pub shift: u8,
}

impl Class {
    /// The bin as an index.
    #[cfg(test)]
    pub(crate) fn bin(self) -> usize {
        self.bin as usize
    }
}

/// Where the owner of a block of a request size is kept (see `owner.rs`),
/// packed in one word so that the allocation and the free each get it with
/// one table load (sizes up to 64 KiB) and test it with one compare: below
/// [`Place::TABLE`], the byte offset of the owner's 4 bytes in the block's
/// slack (class size − 4); at or above, the side table of the class: bits
/// 0–5 its shift (bits 6–7 are 0, so the low byte is the shift), bits 8–39
/// the byte offset of the class's leaf in a region's block of leaves
/// (`leaf_offset`), bits 40–62 the class size (at most `MEDIUM_MAX`;
/// 0 for huge blocks), which lets the medium sizes choose between slack and
/// table from one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place(u64);

impl Place {
    /// The flag of a place in the side table.
    pub const TABLE: u64 = 1 << 63;

    /// The place of a `size`-byte request of class `c` (`c.size >= size`):
    /// the slack when it has room for the 4-byte owner.
    pub(crate) const fn of(size: usize, c: Class) -> Place {
        if c.size - size >= 4 {
            Place((c.size - 4) as u64)
        } else {
            Place::table(c)
        }
    }

    /// The side-table place of class `c`.
    const fn table(c: Class) -> Place {
        let size = if c.size <= MEDIUM_MAX {
            c.size as u64
        } else {
            0
        };
        Place(
            Place::TABLE | size << 40 | (leaf_offset(c.bin as usize) as u64) << 8 | c.shift as u64,
        )
    }

    /// The offset of the owner in the block's slack, or `None` when the
    /// owner is in the side table.
    #[inline(always)]
    pub fn slack(self) -> Option<usize> {
        if self.0 < Place::TABLE {
            Some(self.0 as usize)
        } else {
            None
        }
    }

    /// The byte offset of a side-table place's leaf in its region's block
    /// of leaves.
    #[inline(always)]
    pub fn leaf(self) -> usize {
        (self.0 >> 8) as u32 as usize
    }

    /// The shift of a side-table place: distinct blocks of its class are at
    /// least `1 << shift` bytes apart. The whole low word is returned: a
    /// shift by it (`wrapping_shr`, which keeps its low 6 bits) is a shift
    /// by the class's shift, with no extraction.
    #[inline(always)]
    pub fn shift(self) -> u32 {
        self.0 as u32
    }
}

/// The place of a request of `size` bytes (as `class`): one load from a
/// table by size up to 1 KiB; up to 64 KiB one load from a table by 128-byte
/// step (every size of a step has the same class) and a compare.
#[inline(always)]
pub fn place(size: usize) -> Place {
    if size <= SMALL_MAX {
        // `size <= SMALL_MAX`: in bounds (the compiler elides the check).
        return SMALL_PLACE[size];
    }
    place_large(size)
}

#[inline(always)]
fn place_large(size: usize) -> Place {
    if size > MEDIUM_MAX {
        return place_huge(size);
    }
    // `size.div_ceil(128) <= MEDIUM_MAX / 128 < 1024`: the mask only spares
    // a bounds check (no panic on the allocator path) and changes nothing.
    let t = MEDIUM_PLACE[size.div_ceil(128) & (MEDIUM_PLACE.len() - 1)];
    // The class size, kept in the table place (bits 40–62).
    let c = ((t.0 << 1) >> 41) as usize;
    // (`c >= size`: every size of the step is in the class.)
    if c.wrapping_sub(size) >= 4 {
        Place((c - 4) as u64)
    } else {
        t
    }
}

/// The place of a request above [`MEDIUM_MAX`] (inline, arithmetic only:
/// a call here would make the free save registers on every path).
#[inline(always)]
fn place_huge(size: usize) -> Place {
    // As `class_large`: no overflow, `size <= isize::MAX` (contract).
    let c = size.wrapping_add(4095) & !4095;
    if c - size >= 4 {
        Place((c - 4) as u64)
    } else {
        HUGE_PLACE
    }
}

/// The side-table place of every huge class (one leaf, [`HUGE_SHIFT`]).
const HUGE_PLACE: Place = Place::table(Class {
    size: MEDIUM_MAX + 1,
    bin: HUGE_BIN as u16,
    shift: HUGE_SHIFT as u8,
});

/// The place of each request size up to [`SMALL_MAX`].
static SMALL_PLACE: [Place; SMALL_MAX + 1] = {
    let mut t = [Place(0); SMALL_MAX + 1];
    let mut s = 0;
    while s <= SMALL_MAX {
        t[s] = Place::of(s, SMALL_CLASS[s.div_ceil(8)]);
        s += 1;
    }
    t
};

/// The side-table place of the class of each 128-byte step from
/// `SMALL_MAX + 1` to `MEDIUM_MAX` (index `size.div_ceil(128)`; padded to
/// 1,024 entries so that a mask bounds the index).
static MEDIUM_PLACE: [Place; 1024] = {
    let mut t = [Place(0); 1024];
    let mut i = SMALL_MAX / 128;
    while i <= MEDIUM_MAX / 128 {
        t[i] = Place::table(BIN_CLASS[MEDIUM_BIN[i] as usize]);
        i += 1;
    }
    t
};

/// The byte offset of bin `bin`'s leaf in a region's block of leaves
/// (`owner.rs`): the leaves of bins 1 to [`HUGE_BIN`] follow one another,
/// each `(REGION >> shift) × 4` bytes (a multiple of 4 KiB), in bin order.
pub(crate) const fn leaf_offset(bin: usize) -> usize {
    let mut off = 0;
    let mut b = 1;
    while b < bin {
        off += leaf_bytes(b);
        b += 1;
    }
    off
}

/// The bytes of bin `bin`'s leaf (0 for a bin no class uses).
pub(crate) const fn leaf_bytes(bin: usize) -> usize {
    let shift = if bin == HUGE_BIN {
        HUGE_SHIFT as usize
    } else if BIN_CLASS[bin].size == 0 {
        return 0;
    } else {
        BIN_CLASS[bin].shift as usize
    };
    (crate::owner::REGION >> shift) * 4
}

/// The bytes of a region's block of leaves: every bin's leaf.
pub(crate) const LEAVES_BYTES: usize = leaf_offset(HUGE_BIN) + leaf_bytes(HUGE_BIN);

/// The class of a request of `size` bytes (alignment up to 16; `size <=
/// isize::MAX`, as every `Layout` and `realloc` size is). Sizes up to 1 KiB
/// (nearly all requests) are one table lookup; up to 64 KiB a few
/// instructions and a lookup.
#[inline(always)]
pub(crate) fn class(size: usize) -> Class {
    if size <= SMALL_MAX {
        return SMALL_CLASS[size.div_ceil(8)];
    }
    class_large(size)
}

#[inline]
fn class_large(size: usize) -> Class {
    if size > MEDIUM_MAX {
        // No overflow: `size <= isize::MAX` (contract).
        return Class {
            size: size.wrapping_add(4095) & !4095,
            bin: HUGE_BIN as u16,
            shift: HUGE_SHIFT as u8,
        };
    }
    // `size.div_ceil(128) <= MEDIUM_MAX / 128` and bins are below 64 here;
    // the masks only spare bounds checks (no panic on the allocator path)
    // and change nothing.
    let bin = MEDIUM_BIN[size.div_ceil(128) & (MEDIUM_BIN.len().next_power_of_two() - 1)];
    BIN_CLASS[bin as usize & (BIN_CLASS.len() - 1)]
}

/// The bin of each size from `SMALL_MAX + 1` to `MEDIUM_MAX` by
/// `size.div_ceil(128)`: above 1 KiB every class boundary is a multiple of
/// 256 B, so all sizes of one 128-byte step share a bin (tested for every
/// size). 513 entries, padded to 1,024 so that a mask bounds the index.
static MEDIUM_BIN: [u8; 1024] = {
    let mut t = [0u8; 1024];
    let mut i = SMALL_MAX / 128;
    while i <= MEDIUM_MAX / 128 {
        t[i] = bin_of(if i * 128 > SMALL_MAX {
            i * 128
        } else {
            SMALL_MAX + 1
        }) as u8;
        i += 1;
    }
    t
};

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

/// The class of each bin below [`HUGE_BIN`] (size 0 for unused bins and
/// the padding up to a power of two, 64 entries).
static BIN_CLASS: [Class; BINS.next_power_of_two()] = {
    let mut t = [Class {
        size: 0,
        bin: 0,
        shift: 0,
    }; BINS.next_power_of_two()];
    let mut s = 8;
    while s <= MEDIUM_MAX {
        let b = bin_of(s);
        let size = bin_size(b);
        t[b] = Class {
            size,
            bin: b as u16,
            shift: (usize::BITS - 1 - size.leading_zeros()) as u8,
        };
        s += 8;
    }
    t
};

/// The class of each word count up to `SMALL_MAX / 8` (index `size.div_ceil(8)`).
static SMALL_CLASS: [Class; SMALL_MAX / 8 + 1] = {
    let mut t = [BIN_CLASS[1]; SMALL_MAX / 8 + 1];
    let mut w = 1;
    while w <= SMALL_MAX / 8 {
        t[w] = BIN_CLASS[bin_of(w * 8)];
        w += 1;
    }
    t
};

/// How owners are kept, decided once per process ([`HostInvariant::K3`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) enum Mode {
    /// In the block's slack, or the per-class side table.
    Classes,
    /// In an 8-byte header in front of each block.
    Header,
}

/// The process-wide gate of the allocator path, one byte so that the common
/// allocation tests one value ([`GATE_CLASSES`]): bits 0–1 the placement
/// (0 undecided, [`GATE_CLASSES`], [`GATE_HEADER`]; set once, host:K3), bit 2
/// ([`GATE_OFF`]) tracking switched off, bit 3 ([`GATE_UNTOUCHED`]) no owner
/// kept by class has ever been anything but 0 (host:O3).
pub(crate) static GATE: AtomicU8 = AtomicU8::new(0);
/// Placement by class, tracking on: the gate of the fast path.
pub(crate) const GATE_CLASSES: u8 = 1;
/// Placement in a header.
pub(crate) const GATE_HEADER: u8 = 2;
/// The placement bits.
pub(crate) const GATE_MODE: u8 = 3;
/// Tracking switched off.
pub(crate) const GATE_OFF: u8 = 4;
/// Untouched (host:O3): set with [`GATE_CLASSES`] | [`GATE_OFF`] only, when
/// an allocator built with `starting_off` decides the placement; cleared for
/// good by `set_tracking(true)` (in the same step as [`GATE_OFF`]) and before
/// the first sampled block's owner is stored. While it is set every owner
/// kept by class is 0, so a free (or realloc) need not read it.
pub(crate) const GATE_UNTOUCHED: u8 = 8;

/// Clears [`GATE_UNTOUCHED`] for good: before a non-zero owner (a sampled
/// block's mark) is stored while tracking is off (host:O3). The store
/// follows in program order and the block reaches another thread only
/// through the program's own synchronisation, so every free of it sees the
/// bit cleared.
#[inline]
pub(crate) fn touch() {
    use core::sync::atomic::Ordering::Relaxed;
    if GATE.load(Relaxed) & GATE_UNTOUCHED != 0 {
        GATE.fetch_and(!GATE_UNTOUCHED, Relaxed);
    }
}

#[cfg(feature = "mimalloc")]
mod detect {
    use core::sync::atomic::Ordering::Relaxed;

    use super::{
        GATE, GATE_CLASSES, GATE_HEADER, GATE_MODE, GATE_OFF, GATE_UNTOUCHED, MEDIUM_MAX, Mode,
        class,
    };

    /// The placement for blocks of the mimalloc inner allocator (host:K3):
    /// checks host:K1 on the linked mimalloc the first time. No allocation.
    /// For an allocator that starts with tracking off (`off`: built with
    /// `starting_off`) the thread that decides the placement also switches
    /// tracking off, and marks the gate untouched when the placement is by
    /// class (host:O3).
    #[inline(always)]
    pub(crate) fn mode_starting(off: bool) -> Mode {
        match GATE.load(Relaxed) & GATE_MODE {
            GATE_CLASSES => Mode::Classes,
            GATE_HEADER => Mode::Header,
            _ => decide(off),
        }
    }

    #[cold]
    fn decide(off: bool) -> Mode {
        // Every allocation by class passes here before its first block: the
        // paths by class need not note that the allocator ran.
        alloc_scope::mark_host_allocator_seen();
        let ok = [
            1usize, 8, 9, 16, 17, 24, 64, 65, 72, 100, 128, 129, 1000, 1024, 1025, 4096, 5000,
            65_536, 8191, MEDIUM_MAX,
        ]
        .iter()
        // SAFETY: mi_good_size only computes; it accepts any size.
        .all(|&s| class(s).size == unsafe { libmimalloc_sys::mi_good_size(s) });
        let mut m = if ok { GATE_CLASSES } else { GATE_HEADER };
        if off {
            m |= GATE_OFF;
            if ok {
                m |= GATE_UNTOUCHED;
            }
        }
        // The first thread to decide wins; every thread then sees one mode
        // (the tracking bit may change meanwhile: retry on it). Nothing was
        // kept by class before the decision, so untouched holds.
        let mut seen = GATE.load(Relaxed);
        loop {
            match seen & GATE_MODE {
                GATE_CLASSES => return Mode::Classes,
                GATE_HEADER => return Mode::Header,
                _ => {}
            }
            match GATE.compare_exchange_weak(seen, seen | m, Relaxed, Relaxed) {
                Ok(_) => {
                    return if ok { Mode::Classes } else { Mode::Header };
                }
                Err(now) => seen = now,
            }
        }
    }
}

#[cfg(feature = "mimalloc")]
pub(crate) use detect::mode_starting;

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;
    use libmimalloc_sys as ffi;

    #[test]
    fn classes_are_mimallocs_for_every_size_up_to_the_medium_limit() {
        for s in 1..=MEDIUM_MAX {
            let c = class(s);
            // SAFETY: mi_good_size only computes.
            let good = unsafe { ffi::mi_good_size(s) };
            assert_eq!(c.size, good, "size {s}");
            assert!(
                c.bin() > 0 && c.bin() < HUGE_BIN,
                "bin {} of size {s}",
                c.bin
            );
            assert_eq!(
                1 << c.shift,
                c.size.next_power_of_two() >> usize::from(!c.size.is_power_of_two()),
                "shift of size {s}"
            );
        }
        assert_eq!(mode_starting(false), Mode::Classes);
    }

    #[test]
    fn the_place_of_every_size_is_its_class_slack_or_table() {
        let mut sizes: Vec<usize> = (0..=MEDIUM_MAX + 1).collect();
        sizes.extend([
            1 << 20,
            (1 << 20) + 1,
            (1 << 32) - 1,
            1 << 40,
            isize::MAX as usize,
        ]);
        for s in sizes {
            let c = class(s);
            let p = place(s);
            if c.size - s >= 4 {
                assert_eq!(p.slack(), Some(c.size - 4), "size {s}");
            } else {
                assert_eq!(p.slack(), None, "size {s}");
                assert_eq!(
                    (p.leaf(), p.shift() & 63),
                    (leaf_offset(c.bin()), u32::from(c.shift)),
                    "size {s}"
                );
                assert_eq!(p.shift() & 0xc0, 0, "size {s}: the low byte is the shift");
            }
        }
    }

    #[test]
    fn each_bin_holds_one_block_size() {
        let mut size_of_bin = [0usize; BINS];
        for s in 1..=MEDIUM_MAX {
            let c = class(s);
            assert!(
                size_of_bin[c.bin()] == 0 || size_of_bin[c.bin()] == c.size,
                "bin {}",
                c.bin
            );
            size_of_bin[c.bin()] = c.size;
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
                let c = class(s).size;
                assert!(usable >= c, "size {s}: usable {usable} < class {c}");
                if s > MEDIUM_MAX {
                    assert_eq!(p as usize % 4096, 0, "huge blocks are page-aligned");
                }
                ffi::mi_free(p);
            }
        }
    }
}
