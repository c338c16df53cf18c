//! The floor of alloc-host's own design, measured beside it: an allocator
//! that does only what an exact owner kept per block needs, and nothing
//! else alloc-host does.
//!
//! What it does:
//! - the allocation: the inner block (`alloc_host::Mimalloc`, plain
//!   `mi_malloc` where mimalloc's blocks are aligned enough), the thread's
//!   scope id, the owner stored where alloc-host stores it (the slack or the
//!   side table of the block's class: `alloc_host::floor`, the same code),
//!   the scope's live bytes and peak in thread-locals;
//! - the free: the owner read back (and the table entry cleared), compared
//!   with the thread's scope; another scope's block charged out of line;
//! - the realloc: the owner moved with the block.
//!
//! What it leaves out, all of which alloc-host does: the on/off gate,
//! sampling for the heap profile, counts of allocations and frees, the
//! batch's bounds and flushes to shared counters, budgets, the registry, the
//! header placement for other inner allocators. So an alloc-host pair costs
//! at least what this one does; the difference is alloc-host's overhead
//! above the floor of its design.

use core::cell::Cell;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::*};

use alloc_host::Mimalloc;
use alloc_host::floor::{entry, entry_or_create, place, read_slack, write_slack};

use crate::workload::Scoper;

thread_local! {
    /// The current scope's id (0: none).
    static ID: Cell<u32> = const { Cell::new(0) };
    /// Live bytes charged to the current scope by this thread since it
    /// entered it.
    static LIVE: Cell<i64> = const { Cell::new(0) };
    /// The high-water mark of [`LIVE`].
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

/// Scope ids handed out (1 is the `workload` scope).
static NEXT_ID: AtomicU32 = AtomicU32::new(2);
/// Live bytes of each scope charged by frees from other scopes, by id
/// (modulo the table's length: a floor, not a registry).
static REMOTE: [AtomicI64; 1 << 16] = [const { AtomicI64::new(0) }; 1 << 16];

fn remote(id: u32) -> &'static AtomicI64 {
    &REMOTE[id as usize & ((1 << 16) - 1)]
}

/// Charges a block of another scope (or of none).
#[cold]
#[inline(never)]
fn charge_other(owner: u32, delta: i64) {
    if owner != 0 {
        remote(owner).fetch_add(delta, Relaxed);
    }
}

#[inline(always)]
fn charge_here(delta: i64) {
    let live = LIVE.get() + delta;
    LIVE.set(live);
    if live > PEAK.get() {
        PEAK.set(live);
    }
}

/// Stores `id` as the owner of the `size`-byte block at `p`.
///
/// # Safety
/// `p` is a live block of a `size`-byte request from mimalloc.
#[inline(always)]
unsafe fn put_owner(p: *mut u8, size: usize, id: u32) {
    let c = place(size);
    match c.slack() {
        // SAFETY: the slack lies in the block, past the request (contract).
        Some(off) => unsafe { write_slack(p, off, id) },
        None => {
            if let Some(e) = entry_or_create(p, c) {
                e.store(id, Relaxed);
            }
        }
    }
}

/// Reads the owner of the `size`-byte block at `p`, clearing its table
/// entry.
///
/// # Safety
/// As [`put_owner`], the owner stored by it.
#[inline(always)]
unsafe fn take_owner(p: *mut u8, size: usize) -> u32 {
    let c = place(size);
    match c.slack() {
        // SAFETY: as `put_owner`.
        Some(off) => unsafe { read_slack(p, off) },
        None => match entry(p, c) {
            Some(e) => {
                let o = e.load(Relaxed);
                if o != 0 {
                    e.store(0, Relaxed);
                }
                o
            }
            None => 0,
        },
    }
}

/// The floor allocator.
pub struct BlockOwner;

// SAFETY: every block is `Mimalloc`'s (a GlobalAlloc), freed and reallocated
// through it with the layout it was allocated with; the owner's bytes are in
// the block's class past the request, or in the side table.
unsafe impl GlobalAlloc for BlockOwner {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract, passed on.
        let p = unsafe { Mimalloc.alloc(l) };
        if !p.is_null() {
            // SAFETY: `p` is a fresh block of `l.size()` bytes.
            unsafe { put_owner(p, l.size(), ID.get()) };
            charge_here(l.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` is a live block of `l.size()` bytes from `alloc`.
        let owner = unsafe { take_owner(p, l.size()) };
        if owner == ID.get() {
            LIVE.set(LIVE.get() - l.size() as i64);
        } else {
            charge_other(owner, -(l.size() as i64));
        }
        // SAFETY: as above; freed once.
        unsafe { Mimalloc.dealloc(p, l) }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `p` is a live block of `l.size()` bytes from `alloc`.
        let owner = unsafe { take_owner(p, l.size()) };
        // SAFETY: GlobalAlloc's contract, passed on.
        let q = unsafe { Mimalloc.realloc(p, l, new_size) };
        if q.is_null() {
            // Refused: the block stays, with its owner.
            // SAFETY: `p` is still the live block of `l.size()` bytes.
            unsafe { put_owner(p, l.size(), owner) };
            return q;
        }
        // SAFETY: `q` is a live block of `new_size` bytes.
        unsafe { put_owner(q, new_size, owner) };
        let delta = new_size as i64 - l.size() as i64;
        if owner == ID.get() {
            charge_here(delta);
        } else {
            charge_other(owner, delta);
        }
        q
    }
}

/// Makes a fresh scope id this thread's current scope for the rest of the
/// thread (the `pairs` binary's `block-owner` variant).
pub fn enter_fresh() {
    ID.set(NEXT_ID.fetch_add(1, Relaxed));
}

/// Enters scope `id`; returns the one before it. This thread's live bytes
/// of the scope left go to its remote entry.
fn switch(id: u32) -> u32 {
    let live = LIVE.replace(0);
    PEAK.set(0);
    let prev = ID.replace(id);
    charge_other(prev, live);
    prev
}

/// The floor's scopes: the `workload` scope entered on every thread, and a
/// fresh id per request.
pub struct BlockScopes;

impl Scoper for BlockScopes {
    fn thread<R>(&self, _t: usize, f: impl FnOnce() -> R) -> R {
        let prev = switch(1);
        let r = f();
        switch(prev);
        r
    }

    fn request<R>(&self, f: impl FnOnce() -> R) -> R {
        let prev = switch(NEXT_ID.fetch_add(1, Relaxed));
        let r = f();
        switch(prev);
        r
    }
}

/// The owner in a footer: every block is allocated 4 bytes longer and its
/// owner written just past the caller's bytes, whatever the size (no class,
/// no place, no side table). The cheapest owner per block there is in
/// instructions; its price is memory: a request at (or within 3 bytes of)
/// a size class, as every power of two is, moves up a class (16 B to 24 B,
/// 64 B to 80 B, 4 KiB to 5 KiB).
pub struct FooterOwner;

/// The block's layout with room for the footer (`None`: no room, the size
/// overflows; the caller's request fails as the inner's would).
#[inline(always)]
fn with_footer(l: Layout) -> Option<Layout> {
    Layout::from_size_align(l.size().checked_add(4)?, l.align()).ok()
}

// SAFETY: every block is `Mimalloc`'s, 4 bytes longer than asked (the
// footer), freed and reallocated through it with that longer layout.
unsafe impl GlobalAlloc for FooterOwner {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let Some(f) = with_footer(l) else {
            return core::ptr::null_mut();
        };
        // SAFETY: a non-zero layout.
        let p = unsafe { Mimalloc.alloc(f) };
        if !p.is_null() {
            // SAFETY: the footer's 4 bytes are the block's last.
            unsafe { p.add(l.size()).cast::<u32>().write_unaligned(ID.get()) };
            charge_here(l.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with `l`: its footer is there, and
        // the longer layout is valid (it was built there).
        unsafe {
            let owner = p.add(l.size()).cast::<u32>().read_unaligned();
            if owner == ID.get() {
                LIVE.set(LIVE.get() - l.size() as i64);
            } else {
                charge_other(owner, -(l.size() as i64));
            }
            let f = Layout::from_size_align_unchecked(l.size() + 4, l.align());
            Mimalloc.dealloc(p, f)
        }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let Some(n) = new_size.checked_add(4) else {
            return core::ptr::null_mut();
        };
        // SAFETY: as `dealloc`; the inner realloc keeps the first
        // `min(old, new) + 4` bytes, the footer rewritten past the new size.
        unsafe {
            let owner = p.add(l.size()).cast::<u32>().read_unaligned();
            let f = Layout::from_size_align_unchecked(l.size() + 4, l.align());
            let q = Mimalloc.realloc(p, f, n);
            if q.is_null() {
                return q;
            }
            q.add(new_size).cast::<u32>().write_unaligned(owner);
            let delta = new_size as i64 - l.size() as i64;
            if owner == ID.get() {
                charge_here(delta);
            } else {
                charge_other(owner, delta);
            }
            q
        }
    }
}
