//! Where a block's owner is kept, without a header in front of the block.
//!
//! With mimalloc as the inner allocator (the default), a block of `size` bytes
//! lives in a size class of `class(size)` bytes (see `classes.rs`):
//! - **slack**: when `class(size) - size >= 4`, the owner's compact id (4 bytes)
//!   is written in the last 4 bytes of the class, past the caller's bytes
//!   (most sizes: every size that is not within 3 bytes of a class);
//! - **side table**: otherwise (sizes on or just below a class: powers of two,
//!   `Vec` growth, 4 KiB pages) the compact id goes in a table of the block's
//!   class, indexed by `address >> shift` with `1 << shift` the largest power
//!   of two not above the class size: distinct blocks of one class are at
//!   least a class apart, so each has its own entry (a shift, not a division).
//!
//! Either way the request stays in its own size class, and the inner
//! allocator's `realloc` and `alloc_zeroed` are used as they are.
//!
//! **Memory per block**: 0 bytes in the slack case; 4 bytes per `1 << shift`
//! bytes of address range in the side-table case (4 B per 16 B block, 4 B per
//! 4 KiB block, 6 B per 48 B block), paid only for the pages of the table that
//! such blocks touch.
//!
//! A table entry is 0 unless a tracked live block holds it: a free (and a
//! realloc that moves the block) zeroes the entry *before* the block goes back
//! to the inner allocator ([`HostInvariant::O1`]). So a block allocated while
//! tracking is off needs no store in the table case (its entry reads 0,
//! untracked); in the slack case it writes 0.
//!
//! # Side table
//! A directory of 256 MiB address regions (`.bss`, 4 MiB of zeroed address
//! space), each pointing to the region's **block of leaves**, one per class
//! at a fixed offset (`classes::leaf_offset`, kept in the class's
//! [`Place`]); a leaf holds one `u32` per `1 << shift` bytes of its region.
//! The block (384 MiB of address space per 256 MiB region) is reserved with
//! `mmap` (no swap reservation where the OS has the flag; touched on use)
//! when a block kept in the table first lands in the region, so finding an
//! entry is one load (the directory) and a null test. Only the pages of the
//! leaves that blocks touch become resident. Nothing here allocates through
//! the global allocator, locks, or panics. An address the table cannot cover
//! (above 2^47, or `mmap` refused) leaves its block untracked, consistently
//! at allocation and free.
//!
//! # Invariants
//! The table keeps [`HostInvariant::O1`] (the owner kept by class) and
//! [`HostInvariant::O2`] (placement by size alone); their definitions are on
//! the variants.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering::*};

#[cfg(doc)]
use crate::HostInvariant;
use crate::classes::{LEAVES_BYTES, Place};

const REGION_SHIFT: u32 = 28;
/// Bytes of address space per directory entry.
pub(crate) const REGION: usize = 1 << REGION_SHIFT;
/// Regions of a 47-bit address space.
const DIR_LEN: usize = 1 << (47 - REGION_SHIFT);

/// Each region's block of leaves ([`LEAVES_BYTES`]), null until a block kept
/// in the table lands in the region.
static DIR: [AtomicPtr<u8>; DIR_LEN] = [const { AtomicPtr::new(null_mut()) }; DIR_LEN];

/// Reads the owner id from the slack of a block at `p`, `off` the slack
/// place of its request size ([`Place::slack`]).
///
/// # Safety
/// `p` is a live block of a request whose place is the slack at `off`, so
/// with at least `off + 4` usable bytes (its class, host:K1, host:K2).
#[inline(always)]
pub unsafe fn read_slack(p: *const u8, off: usize) -> u32 {
    // SAFETY: the 4 bytes end at `p + class size`, inside the block (contract).
    unsafe { p.add(off).cast::<u32>().read_unaligned() }
}

/// Writes the owner id into the slack of a block at `p`, `off` the slack
/// place of its request size.
///
/// # Safety
/// As [`read_slack`]; the bytes at `off..off + 4` lie past the caller's
/// request (the place is the slack only when the class has 4 bytes past
/// it), so they belong to no one else.
#[inline(always)]
pub unsafe fn write_slack(p: *mut u8, off: usize, id: u32) {
    // SAFETY: as `read_slack`; those bytes belong to no one else.
    unsafe { p.add(off).cast::<u32>().write_unaligned(id) }
}

/// The index of a block at offset `off` of its region in the leaf of a
/// class of this `shift` ([`Place::shift`]: its low 6 bits): `off >>
/// shift`, below [`leaf_len`] since `off < REGION`.
#[inline(always)]
fn index(off: usize, shift: u32) -> usize {
    off.wrapping_shr(shift)
}

/// Entries of the leaf of a class of this `shift`.
fn leaf_len(shift: u32) -> usize {
    REGION >> (shift & 63)
}

/// The table entry of the block at `p` whose request has the side-table
/// place `c`, or `None` where the table has none yet (nothing was ever kept
/// in its region: reads as untracked) or cannot reach.
#[inline(always)]
pub fn entry(p: *const u8, c: Place) -> Option<&'static AtomicU32> {
    let addr = p as usize;
    let r = DIR.get(addr >> REGION_SHIFT)?.load(Acquire);
    if r.is_null() {
        return None;
    }
    let i = index(addr & (REGION - 1), c.shift());
    debug_assert!(i < leaf_len(c.shift()), "index {i} of {c:?} past its leaf");
    // SAFETY: the block of leaves is `LEAVES_BYTES` of zeroed memory, never
    // freed once published; the class's leaf starts at `c.leaf()` and holds
    // `leaf_len(c.shift())` `AtomicU32`s inside it (`classes::leaf_offset`,
    // tested), and `i < leaf_len(c.shift())` because the offset is below
    // REGION and `i = offset >> shift`.
    Some(unsafe { &*r.add(c.leaf()).cast::<AtomicU32>().add(i) })
}

/// [`entry`], making the region's block of leaves on first use.
#[inline(always)]
pub fn entry_or_create(p: *const u8, c: Place) -> Option<&'static AtomicU32> {
    match entry(p, c) {
        Some(e) => Some(e),
        None => create_entry(p, c),
    }
}

#[cold]
#[inline(never)]
fn create_entry(p: *const u8, c: Place) -> Option<&'static AtomicU32> {
    let region = DIR.get(p as usize >> REGION_SHIFT)?;
    if region.load(Acquire).is_null() {
        let m = map(LEAVES_BYTES)?;
        if region
            .compare_exchange(null_mut(), m, AcqRel, Acquire)
            .is_err()
        {
            unmap(m, LEAVES_BYTES);
        }
    }
    entry(p, c)
}

/// Zeroed, readable and writable memory from the OS, reserved lazily.
fn map(bytes: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choice; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const NORESERVE: libc::c_int = libc::MAP_NORESERVE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const NORESERVE: libc::c_int = 0;

fn unmap(p: *mut u8, bytes: usize) {
    // SAFETY: `p` is a mapping of `bytes` made by `map` and never published.
    unsafe { libc::munmap(p.cast(), bytes) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::{MEDIUM_MAX, Place, class};

    #[test]
    fn distinct_blocks_of_a_class_get_distinct_entries() {
        for s in [8usize, 16, 24, 40, 48, 56, 80, 96, 112, 4096, MEDIUM_MAX] {
            let c = class(s);
            let mut prev = None;
            // Addresses one class apart, across a region's whole range.
            let mut off = 0usize;
            while off + c.size <= REGION {
                let i = index(off, u32::from(c.shift));
                assert!(i < leaf_len(u32::from(c.shift)));
                if let Some(p) = prev {
                    assert!(
                        i > p,
                        "class {}: offsets a class apart share entry {i}",
                        c.size
                    );
                }
                prev = Some(i);
                off += c.size * 997;
            }
            // Neighbours: blocks exactly a class apart, at the region's start
            // and end.
            for start in [0, REGION - 64 * c.size] {
                for k in 0..63 {
                    let (a, b) = (start + k * c.size, start + (k + 1) * c.size);
                    assert_ne!(
                        index(a, u32::from(c.shift)),
                        index(b, u32::from(c.shift)),
                        "class {}: neighbours at offsets {a} and {b} share an entry",
                        c.size
                    );
                }
            }
        }
        let h = class(MEDIUM_MAX + 1);
        assert_eq!(h.bin(), crate::classes::HUGE_BIN);
        assert!(index(REGION - 1, u32::from(h.shift)) < leaf_len(u32::from(h.shift)));
    }

    #[test]
    fn entries_persist_and_are_zero_first() {
        let c = Place::of(64, class(64));
        assert_eq!(c.slack(), None);
        let p = 0x10_0000_0040usize as *const u8; // 64 GiB: below where mimalloc maps
        let e = entry_or_create(p, c).unwrap();
        assert_eq!(e.load(Relaxed), 0);
        e.store(42, Relaxed);
        assert_eq!(entry(p, c).unwrap().load(Relaxed), 42);
        assert!(entry_or_create(usize::MAX as *const u8, c).is_none());
    }

    #[test]
    fn every_class_leaf_lies_inside_the_block_and_apart_from_the_others() {
        // Every table place of every size: the entries of a region's first
        // and last address lie in the class's own leaf, inside the block,
        // and the leaves of distinct classes do not overlap.
        let mut leaves: Vec<(usize, usize, usize)> = Vec::new();
        let mut sizes: Vec<usize> = (1..=MEDIUM_MAX + 1).collect();
        sizes.extend([1 << 20, (1 << 20) + 4096, 1 << 40]);
        for s in sizes {
            let c = class(s);
            let p = crate::classes::place(s);
            if p.slack().is_some() {
                continue;
            }
            let start = p.leaf();
            let len = leaf_len(p.shift()) * 4;
            assert_eq!(len, (REGION >> c.shift) * 4, "size {s}");
            for off in [0, REGION - 1] {
                let at = start + index(off, p.shift()) * 4;
                assert!(
                    at >= start && at + 4 <= start + len,
                    "size {s}, offset {off}"
                );
                assert!(at + 4 <= LEAVES_BYTES, "size {s}, offset {off}");
            }
            assert_eq!(start % 4096, 0, "size {s}: leaf at {start}");
            // (Every huge class shares one leaf.)
            if !leaves.iter().any(|l| l.1 == start) {
                leaves.push((c.size, start, len));
            }
        }
        leaves.sort_by_key(|l| l.1);
        for w in leaves.windows(2) {
            assert!(
                w[0].1 + w[0].2 <= w[1].1,
                "leaves of classes {} and {} overlap",
                w[0].0,
                w[1].0
            );
        }
        assert!(leaves.len() >= 45, "{} classes in the table", leaves.len());
    }

    #[test]
    fn one_address_in_two_classes_has_two_entries() {
        // A block of one class freed and a block of another class at the
        // same address: their entries differ (a stale entry is never read).
        let p = 0x11_0000_0000usize as *const u8; // offset 0 of its region: index 0 in every class
        let a = Place::of(16, class(16));
        let b = Place::of(4096, class(4096));
        let ea = entry_or_create(p, a).unwrap();
        let eb = entry_or_create(p, b).unwrap();
        assert!(!core::ptr::eq(ea, eb));
        ea.store(7, Relaxed);
        assert_eq!(eb.load(Relaxed), 0);
        ea.store(0, Relaxed);
    }
}
