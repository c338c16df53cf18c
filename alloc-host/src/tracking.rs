//! `TrackingAllocator`: the `#[global_allocator]` that charges every host heap
//! allocation to the current scope.
//!
//! Every path here is an allocator path: it never allocates through the global
//! allocator, never panics, never takes a lock, and uses checked arithmetic. A
//! layout whose size plus header overflows gets null, as `GlobalAlloc` allows.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use core::sync::atomic::Ordering::Relaxed;

use alloc_scope::{
    COMPACT_SAMPLED, ScopeId, WORD_SAMPLED, begin_host_alloc, begin_host_realloc, charge_host_free,
    charge_host_free_compact, finish_host_alloc, finish_host_realloc, host_fast_charge,
    host_fast_id, host_fast_realloc_charge, mark_host_allocator_seen, owner_from_compact,
    track_host_alloc,
};

use crate::classes::{
    GATE, GATE_CLASSES, GATE_HEADER, GATE_MODE, GATE_OFF, GATE_UNTOUCHED, Place, place,
};
use crate::profile;

use crate::header::{WORD, outer, outer_size, outer_unchecked};

/// The inner allocator used when none is named: mimalloc (through its C API,
/// see [`Mimalloc`](crate::Mimalloc)) with the `mimalloc` feature (default), the
/// system allocator without it.
#[cfg(feature = "mimalloc")]
pub type DefaultInner = crate::Mimalloc;
/// The inner allocator used when none is named: mimalloc with the `mimalloc`
/// feature (default), the system allocator without it.
#[cfg(not(feature = "mimalloc"))]
pub type DefaultInner = std::alloc::System;

/// Switches tracking on or off for the whole process at run time. While off,
/// allocations are charged nowhere (their frees are ignored later too); blocks
/// allocated while on are still charged back when freed, so live figures stay
/// consistent. Off, an allocation kept by class costs one load of the gate and
/// a class lookup, plus a 4-byte store where the owner goes in the slack (in
/// the side table the entry already reads "untracked"); its free reads the
/// owner as any free does, since a block allocated while tracking was on may
/// be freed at any time. A process whose allocator starts with tracking off
/// ([`TrackingAllocator::starting_off`]) skips that read until tracking is
/// first switched on.
///
/// Before the first allocation this makes one (a small box, charged
/// nowhere), so that the installed allocator has decided how it starts and
/// the switch applies on top of that.
pub fn set_tracking(on: bool) {
    settle_gate();
    if on {
        GATE.fetch_and(!(GATE_OFF | GATE_UNTOUCHED), Relaxed);
    } else {
        GATE.fetch_or(GATE_OFF, Relaxed);
    }
}

/// Whether tracking is on (as [`set_tracking`], one small allocation before
/// the first).
pub fn tracking_enabled() -> bool {
    settle_gate();
    GATE.load(Relaxed) & GATE_OFF == 0
}

/// Lets the installed allocator decide its placement and starting state
/// (host:K3) if no allocation did yet: one small box, charged nowhere. A
/// `TrackingAllocator` over another inner allocator never decides, so this
/// then allocates (uncharged) each time it is called.
fn settle_gate() {
    if cfg!(feature = "mimalloc") && GATE.load(Relaxed) & GATE_MODE == 0 {
        alloc_scope::untracked(|| drop(std::hint::black_box(Box::new(0u8))));
    }
}

/// Whether a `TrackingAllocator` is this process's global allocator. The
/// allocator notes that it ran (by class: when it decides the placement,
/// before its first block; otherwise on every path, tracking on or off,
/// inside `untracked` too); this allocates one small box if nothing was
/// noted yet. It
/// never touches the tracking switch, so it is safe to call while other
/// threads allocate, with tracking off, and inside `untracked`.
pub fn is_installed() -> bool {
    if alloc_scope::host_allocator_seen() {
        return true;
    }
    let b = std::hint::black_box(Box::new(0u64));
    drop(b);
    alloc_scope::host_allocator_seen()
}

/// A global allocator that charges each allocation to the calling thread's
/// current scope and each free back to the scope that allocated the block.
///
/// ```no_run
/// use alloc_host::TrackingAllocator;
///
/// #[global_allocator]
/// static A: TrackingAllocator = TrackingAllocator::new();
/// ```
/// To wrap another allocator: `TrackingAllocator::with_inner(std::alloc::System)`.
///
/// Where the owner is kept: over mimalloc ([`TrackingAllocator::new`]), in the
/// block's size-class slack or a per-class side table, so every request stays
/// in its own size class (see the crate docs, "memory per block"); over any
/// other inner allocator, and for alignments above 8, in an 8-byte header in
/// front of the block (`max(8, align)` bytes).
pub struct TrackingAllocator<A: GlobalAlloc = DefaultInner> {
    inner: A,
    /// Owners by size class (the inner allocator is this crate's `Mimalloc`).
    by_class: bool,
    /// Tracking starts off (`TrackingAllocator::starting_off`, over mimalloc).
    #[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
    start_off: bool,
}

#[cfg(feature = "mimalloc")]
impl TrackingAllocator<crate::Mimalloc> {
    /// Tracking over mimalloc, owners kept by size class.
    pub const fn new() -> Self {
        TrackingAllocator {
            inner: crate::Mimalloc,
            by_class: true,
            start_off: false,
        }
    }

    /// This allocator with tracking off from the first allocation, for a
    /// binary that links tracking in and switches it on only when asked
    /// ([`set_tracking`]). Until tracking is first switched on (and while no
    /// block is sampled by the heap profiler), no block carries an owner,
    /// so a free skips reading it (host:O3): the allocator then costs about
    /// what plain mimalloc does. After that, tracking off costs as
    /// [`set_tracking`] says.
    ///
    /// ```no_run
    /// use alloc_host::TrackingAllocator;
    ///
    /// #[global_allocator]
    /// static A: TrackingAllocator = TrackingAllocator::new().starting_off();
    ///
    /// fn main() {
    ///     if std::env::var_os("MYAPP_TRACK_MEMORY").is_some() {
    ///         alloc_host::set_tracking(true);
    ///     }
    /// }
    /// ```
    pub const fn starting_off(self) -> Self {
        TrackingAllocator {
            start_off: true,
            ..self
        }
    }
}

#[cfg(not(feature = "mimalloc"))]
impl TrackingAllocator<std::alloc::System> {
    /// Tracking over the system allocator (the `mimalloc` feature is off).
    pub const fn new() -> Self {
        TrackingAllocator {
            inner: std::alloc::System,
            by_class: false,
            start_off: false,
        }
    }
}

impl Default for TrackingAllocator<DefaultInner> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// Tracking over `inner` (`System`, jemalloc, ...).
    pub const fn with_inner(inner: A) -> Self {
        TrackingAllocator {
            inner,
            by_class: false,
            start_off: false,
        }
    }

    /// Whether this layout's owner is kept by class (host:O2: a function of
    /// the layout and the process-wide mode only), for a free or realloc.
    #[inline(always)]
    fn by_class(&self, layout: Layout) -> bool {
        #[cfg(feature = "mimalloc")]
        if self.by_class && layout.align() <= 8 {
            return crate::classes::mode_starting(self.start_off) == crate::classes::Mode::Classes;
        }
        let _ = layout;
        false
    }

    /// Allocates with `get`: the fast path (owner by class, tracking on: one
    /// test of the gate), else [`Self::alloc_other`].
    #[inline(always)]
    unsafe fn alloc_any(&self, layout: Layout, get: impl FnOnce(&A, Layout) -> *mut u8) -> *mut u8 {
        if self.by_class && layout.align() <= 8 {
            let gate = GATE.load(Relaxed);
            // An allocator built `starting_off` expects tracking off: that
            // gate is tested first (`start_off` is a constant of the static,
            // so each allocator compiles one order).
            if self.start_off && gate & !GATE_UNTOUCHED == GATE_CLASSES | GATE_OFF {
                return self.alloc_off(layout, get);
            }
            if gate == GATE_CLASSES {
                // SAFETY: the caller's layout; placement by class (the gate).
                return unsafe { self.alloc_by_class(layout, get) };
            }
            if !self.start_off && gate & !GATE_UNTOUCHED == GATE_CLASSES | GATE_OFF {
                return self.alloc_off(layout, get);
            }
        }
        // SAFETY: as above.
        unsafe { self.alloc_other(layout, get) }
    }

    /// An allocation by class while tracking is off: charged nowhere, its
    /// owner stored as 0 (untracked) where the slack keeps it; in the side
    /// table the entry already reads 0 (host:O1: an entry is 0 unless a
    /// tracked live block or a sampled one holds it), so nothing is stored
    /// there unless the block is sampled (then the owner is
    /// `COMPACT_SAMPLED`, untracked and sampled).
    ///
    /// The heap profiler's countdown is stepped before the inner call, so
    /// that a block whose owner goes in the table (nothing to store) needs
    /// nothing after the inner call.
    #[inline(always)]
    fn alloc_off(&self, layout: Layout, get: impl FnOnce(&A, Layout) -> *mut u8) -> *mut u8 {
        // (That this allocator ran was noted when it decided the placement.)
        let size = layout.size();
        if alloc_scope::host_sample_due(size) {
            let p = get(&self.inner, layout);
            if !p.is_null() {
                // SAFETY: a live block of `size` bytes (host:K1), not yet
                // returned to the caller; its slack (if any) gets the mark.
                unsafe { alloc_off_sampled(p, size) };
            }
            return p;
        }
        match place(size).slack() {
            None => get(&self.inner, layout),
            Some(off) => {
                let p = get(&self.inner, layout);
                if !p.is_null() {
                    // SAFETY: a live block of class `class(size)` (host:K1);
                    // the slack past `size` is this allocator's.
                    unsafe { crate::owner::write_slack(p, off, 0) };
                }
                p
            }
        }
    }

    /// Every allocation but the fast path: tracking off, the header, or the
    /// placement not decided yet (out of line, so the fast path keeps a short
    /// prologue).
    #[inline(never)]
    unsafe fn alloc_other(
        &self,
        layout: Layout,
        get: impl FnOnce(&A, Layout) -> *mut u8,
    ) -> *mut u8 {
        if self.by_class(layout) {
            if GATE.load(Relaxed) & GATE_OFF == 0 {
                // SAFETY: as `alloc_any` (the placement was just decided).
                return unsafe { self.alloc_by_class(layout, get) };
            }
            return self.alloc_off(layout, get);
        }
        // SAFETY: the caller's layout.
        unsafe { self.alloc_with(layout, get) }
    }

    /// Charges and gets a block whose owner is kept by class, tracking on:
    /// the thread's fast-path word, the inner allocation, the owner's store,
    /// the batch; anything else out of line ([`Self::alloc_by_class_slow`]).
    #[inline(always)]
    unsafe fn alloc_by_class(
        &self,
        layout: Layout,
        get: impl FnOnce(&A, Layout) -> *mut u8,
    ) -> *mut u8 {
        if host_fast_id() == alloc_scope::NOT_FAST {
            // SAFETY: the caller's layout.
            return unsafe { self.alloc_by_class_slow(layout, get) };
        }
        let size = layout.size();
        let p = get(&self.inner, layout);
        if p.is_null() {
            return p;
        }
        // The word and the place are read after the call rather than kept in
        // saved registers across it (a thread-local load and a table lookup
        // are cheaper than the pushes and pops): the inner allocator never
        // enters this crate or alloc-scope, so the word is the one tested
        // above. Every rare case below is a tail call that returns `p`, so
        // nothing stays live across a call on the common path.
        let id = host_fast_id();
        let c = place(size);
        // SAFETY: a live block of `size` bytes (so of its class, host:K1).
        if !unsafe { put_owner_existing(p, c, id) } {
            // The table's region does not exist yet (or cannot).
            // SAFETY: a live block of `size` bytes, not yet returned, the
            // thread's fast-path word.
            return unsafe { alloc_fast_new_entry(p, size, c, id) };
        }
        // The heap profiler's countdown, on the thread state just addressed
        // (a subtraction and a branch), after the owner's store so that the
        // word is no longer live across it; when it runs out, the rest is out
        // of line (the sampled flag is then added to the stored owner).
        if alloc_scope::host_sample_due(size) {
            // SAFETY: the owner was kept with the thread's fast-path word.
            return unsafe { alloc_fast_sampled(p, size, id, true) };
        }
        // SAFETY: the block was kept with the thread's fast-path word;
        // charged once.
        if unsafe { alloc_scope::host_fast_charge_due(size) } {
            return flush_then(p);
        }
        p
    }

    /// [`Self::alloc_by_class`] on a thread that does not charge batched
    /// (budgets, `untracked`, its first charge, after its exit hook).
    #[inline(never)]
    unsafe fn alloc_by_class_slow(
        &self,
        layout: Layout,
        get: impl FnOnce(&A, Layout) -> *mut u8,
    ) -> *mut u8 {
        let size = layout.size();
        let c = place(size);
        // SAFETY: the global allocator's allocation path; the block's owner is
        // kept by class and read back by `dealloc` with the same size.
        unsafe {
            track_host_alloc(size, move |id| {
                let p = get(&self.inner, layout);
                if p.is_null() {
                    return (p, false);
                }
                let mark = profile::compact_mark(profile::sample_alloc(p, size, || {
                    owner_from_compact(id)
                }));
                // SAFETY: a live block of class `c` (host:K1).
                let kept = put_owner(p, c, id | mark);
                if !kept && mark != 0 {
                    profile::sampled_free(p);
                }
                (p, kept)
            })
        }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }

    /// Charges a new block (or refuses it), gets it from the inner allocator
    /// with `get`, and writes the owner header.
    #[inline(always)]
    unsafe fn alloc_with(
        &self,
        layout: Layout,
        get: impl FnOnce(&A, Layout) -> *mut u8,
    ) -> *mut u8 {
        let Some((outer, h)) = outer(layout) else {
            return null_mut();
        };
        if GATE.load(Relaxed) & GATE_OFF != 0 {
            mark_host_allocator_seen();
            let base = get(&self.inner, outer);
            if base.is_null() {
                return base;
            }
            // SAFETY: `base + h` is the user pointer of this live block (host:H1).
            let user = unsafe { base.add(h) };
            let mark = profile::word_mark(profile::sample_alloc(user, layout.size(), || {
                ScopeId::UNTRACKED
            }));
            // SAFETY: as below.
            unsafe { return write_owner(base, h, ScopeId::UNTRACKED.to_bits() | mark) };
        }
        // SAFETY: this is the global allocator's allocation path; the charge is
        // finished exactly once below with the same size.
        let Some(charge) = (unsafe { begin_host_alloc(layout.size()) }) else {
            return null_mut();
        };
        let base = get(&self.inner, outer);
        // SAFETY: finishes the charge begun above; a null block is charged
        // nothing (a refused allocation leaves no trace).
        unsafe { finish_host_alloc(charge, layout.size(), !base.is_null()) };
        if base.is_null() {
            return base;
        }
        // SAFETY: `base + h` is the user pointer of this live block (host:H1).
        let user = unsafe { base.add(h) };
        let owner = charge.owner();
        let mark = profile::word_mark(profile::sample_alloc(user, layout.size(), || owner));
        // SAFETY: `base` is a live block of `outer.size() = size + h` bytes.
        unsafe { write_owner(base, h, owner.to_bits() | mark) }
    }
}

/// Writes the owner word in front of the user pointer and returns it.
///
/// # Safety
/// `base` is a live block of at least `h` bytes, aligned to `max(8, align)`,
/// `h` a multiple of 8 and at least 8 (host:H1).
#[inline(always)]
unsafe fn write_owner(base: *mut u8, h: usize, owner: u64) -> *mut u8 {
    {
        // SAFETY: `base` is a live block of `outer.size() = size + h` bytes, so
        // `base + h` is inside it or one past its end (size 0), and the 8 bytes
        // before it lie in the header (h >= 8). `base` is aligned to max(8,
        // align) and h is a multiple of 8, so `user - 8` is 8-aligned (host:H1, host:H2).
        unsafe {
            let user = base.add(h);
            user.sub(WORD).cast::<u64>().write(owner);
            user
        }
    }
}

// SAFETY: every method returns blocks obtained from `inner` (offset by the header
// size `h`, inside the inner block) and passes the inner pointer and layout back
// unchanged on dealloc/realloc, so `inner`'s GlobalAlloc contract carries over;
// the returned pointer meets the caller's layout (host:H1).
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `layout` is the caller's (non-zero size, GlobalAlloc); the
        // header path gives `inner.alloc` size + h, h >= 8.
        unsafe { self.alloc_any(layout, |a, l| a.alloc(l)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`; the inner allocator zeroes, and only the slack
        // past the caller's bytes (by class) or the header word is written
        // afterwards.
        unsafe { self.alloc_any(layout, |a, l| a.alloc_zeroed(l)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if cfg!(feature = "mimalloc") && self.by_class && layout.align() <= 8 {
            // One compare of the gate, as `alloc`: placed by class, tracking
            // on; a second for tracking off. Anything else (untouched, the
            // header, undecided) is out of line.
            let gate = GATE.load(Relaxed);
            // Built `starting_off`: a block that never carried an owner
            // (untouched, host:O3) is the expected case, tested first.
            if self.start_off && gate & GATE_UNTOUCHED != 0 {
                // SAFETY: as below.
                return unsafe { self.inner.dealloc(ptr, layout) };
            }
            if gate != GATE_CLASSES {
                if gate & GATE_UNTOUCHED != 0 {
                    // SAFETY: the caller's live block of `layout`; its owner
                    // is 0 (host:O3), its table entry already 0 (host:O1).
                    return unsafe { self.inner.dealloc(ptr, layout) };
                }
                if gate == GATE_CLASSES | GATE_OFF {
                    // Tracking off: the owner read without dirtying a leaf;
                    // a tracked one is charged out of line.
                    let size = layout.size();
                    // SAFETY: a live block placed by class (as below).
                    let id = unsafe { take_owner::<true>(ptr, place(size)) };
                    if id != 0 {
                        // SAFETY: the owner just taken, the block still live.
                        return unsafe { self.dealloc_owned(ptr, layout, id) };
                    }
                    // SAFETY: untracked: the caller's live block, to the inner.
                    return unsafe { self.inner.dealloc(ptr, layout) };
                }
                // SAFETY: the caller's live block of `layout`.
                return unsafe { self.dealloc_other(ptr, layout, gate) };
            }
            // SAFETY: `ptr` is a live block of this layout, placed by class.
            return unsafe { self.dealloc_by_class::<false>(ptr, layout) };
        }
        // SAFETY: the caller's live block of `layout`, its owner in the header.
        unsafe { self.dealloc_header(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if cfg!(feature = "mimalloc") && self.by_class && layout.align() <= 8 {
            // One compare of the gate, as `dealloc`: placed by class, tracking
            // on; the rest (tracking off, untouched, the header, undecided)
            // is out of line. Both are tail calls: this function keeps no
            // frame, so neither path pays the other's.
            let gate = GATE.load(Relaxed);
            if gate == GATE_CLASSES {
                // SAFETY: the caller's live block of `layout` (GlobalAlloc
                // contract), placed by class (the gate).
                return unsafe { self.realloc_fast(ptr, layout, new_size) };
            }
            // SAFETY: as above.
            return unsafe { self.realloc_other(ptr, layout, new_size, gate) };
        }
        // SAFETY: as above, its owner in the header.
        unsafe { self.realloc_header(ptr, layout, new_size) }
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// The fast path's realloc (by class, tracking on), out of line: its
    /// frame (the block, both sizes and the thread state live across the
    /// inner call) is then its own.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`, for a block placed by class.
    #[inline(never)]
    unsafe fn realloc_fast(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the contract.
        unsafe { self.realloc_by_class::<false>(ptr, layout, new_size) }
    }

    /// `realloc` when the gate the caller read (`gate`) is not "by class,
    /// tracking on": tracking off, untouched (host:O3), the header, or the
    /// placement not decided yet.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`.
    #[inline(never)]
    unsafe fn realloc_other(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        gate: u8,
    ) -> *mut u8 {
        if gate == GATE_CLASSES | GATE_OFF {
            // SAFETY: the contract; placed by class, tracking off.
            return unsafe { self.realloc_by_class::<true>(ptr, layout, new_size) };
        }
        if gate & GATE_UNTOUCHED != 0 {
            // SAFETY: the contract; the block's owner is 0 (host:O3; the bit
            // is set only with the placement by class).
            return unsafe { self.realloc_untouched(ptr, layout, new_size) };
        }
        if self.by_class(layout) {
            // SAFETY: the contract; placed by class (the placement just
            // decided, or the gate changed since the caller read it).
            return unsafe { self.realloc_by_class::<true>(ptr, layout, new_size) };
        }
        // SAFETY: the contract; the owner is in the header.
        unsafe { self.realloc_header(ptr, layout, new_size) }
    }

    /// `realloc` of a block whose owner is in its header.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`, for a block not placed by class.
    // Out of line: inlined, its frame (six saved registers and a spill
    // area) would be the whole realloc's, fast path included.
    #[inline(never)]
    unsafe fn realloc_header(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (outer, h) = outer_unchecked(layout);
        let Some(new_outer) = outer_size(new_size, h, layout.align()) else {
            return null_mut();
        };
        // SAFETY: as in `dealloc`, the owner word is at `ptr - 8`.
        let bits = unsafe { ptr.sub(WORD).cast::<u64>().read() };
        let owner = ScopeId::from_bits(bits & !WORD_SAMPLED);
        // SAFETY: the global allocator's realloc path, for a live block charged
        // to `owner`; finished exactly once below.
        let Some(charge) = (unsafe { begin_host_realloc(owner, layout.size(), new_size) }) else {
            return null_mut();
        };
        // A sampled block's realloc is its free and a new allocation: out of
        // the in-use profile before its address can be reused, back if it fails.
        let taken = profile::take_sampled(ptr, bits & WORD_SAMPLED != 0);
        // SAFETY: the inner block is `ptr - h` with layout `outer`; `new_outer`
        // is non-zero and valid for its alignment (checked by outer_size). The
        // inner realloc keeps the first min(old, new) + h bytes, header included.
        let base = unsafe { self.inner.realloc(ptr.sub(h), outer, new_outer) };
        // SAFETY: finishes the charge begun above; a failed realloc leaves the
        // block and every figure as they were.
        unsafe { finish_host_realloc(charge, layout.size(), new_size, !base.is_null()) };
        if base.is_null() {
            profile::restore_sampled(taken);
            return base;
        }
        // SAFETY: `base` is the moved inner block of `new_outer = new_size + h`
        // bytes; `base + h` is the user pointer (host:H1).
        let user = unsafe { base.add(h) };
        let now = profile::sample_alloc(user, new_size, || owner);
        if bits & WORD_SAMPLED != 0 || now {
            // SAFETY: the owner word of the moved block, at `user - 8` (host:H2).
            unsafe { write_owner(base, h, owner.to_bits() | profile::word_mark(now)) };
        }
        user
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// `realloc` of a block whose owner is kept by class: when the owner is
    /// the thread's current scope and the thread batches (the owner equals
    /// the fast-path word), the inner realloc, the owner's store and the
    /// batch; otherwise [`Self::realloc_by_class_slow`].
    ///
    /// # Safety
    /// `ptr` is a live block of `layout` from this allocator, its owner kept
    /// by class; `new_size` as `GlobalAlloc::realloc` requires.
    #[inline(always)]
    unsafe fn realloc_by_class<const OFF: bool>(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        let size = layout.size();
        let c = place(size);
        // SAFETY: a live block of class `class(size)` (contract). Its table entry (if
        // any) is zeroed before the inner realloc may free the block
        // (host:O1), and put back if the realloc fails.
        let id = unsafe { take_owner::<OFF>(ptr, c) };
        if id != host_fast_id() {
            // SAFETY: as this function's, with the owner just taken.
            return unsafe { self.realloc_by_class_slow(ptr, layout, new_size, c, id) };
        }
        // SAFETY: `ptr` and `layout` are the caller's; `new_size` is non-zero
        // and, with the same alignment, a valid layout (GlobalAlloc contract).
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if p.is_null() {
            // SAFETY: the old block is still live, of `size` bytes, its owner
            // taken; the word is the one tested above (as below).
            return unsafe { realloc_fast_failed(ptr, size) };
        }
        // As in `alloc_by_class`: the word and the place are read after the
        // call (the inner allocator never enters this crate or alloc-scope,
        // so the word is the one tested above), and every rare case is a
        // tail call that returns `p`.
        let id = host_fast_id();
        // SAFETY: a live block of `new_size` bytes (so of its class, host:K1).
        if !unsafe { put_owner_existing(p, place(new_size), id) } {
            // SAFETY: the moved (or grown) block, live and not yet returned;
            // the realloc is not charged yet.
            return unsafe { realloc_fast_new_entry(p, size, new_size, id) };
        }
        // A realloc is an allocation of `new_size` bytes for the profiler
        // (the old block was not sampled: its owner equals the fast word).
        if alloc_scope::host_sample_due(new_size) {
            // SAFETY: the owner was kept with the word; not charged yet.
            return unsafe { realloc_fast_sampled(p, size, new_size, id) };
        }
        // SAFETY: the block is charged to the thread's current scope (`id`
        // is its fast-path word), its realloc charged once.
        if unsafe { alloc_scope::host_fast_realloc_due(size, new_size) } {
            return flush_then(p);
        }
        p
    }

    /// [`Self::realloc_by_class`] while the gate is untouched (host:O3): the
    /// old block's owner is 0, so the new one is an allocation with tracking
    /// off ([`Self::alloc_off`]'s stores).
    ///
    /// # Safety
    /// As [`Self::realloc_by_class`].
    #[inline(never)]
    unsafe fn realloc_untouched(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` and `layout` are the caller's; `new_size` is non-zero
        // and, with the same alignment, a valid layout (GlobalAlloc contract).
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if let Some(off) = place(new_size).slack() {
                // SAFETY: a live block of class `class(new_size)` (host:K1);
                // the slack past `new_size` is this allocator's.
                unsafe { crate::owner::write_slack(p, off, 0) };
            }
            if alloc_scope::host_sample_due(new_size) {
                // SAFETY: a live block of `new_size` bytes, not yet returned.
                unsafe { alloc_off_sampled(p, new_size) };
            }
        }
        p
    }

    /// [`Self::realloc_by_class`] of a block whose owner (`id`, already
    /// taken) is not the thread's fast-path word: another scope's, an
    /// untracked block, a sampled block (`COMPACT_SAMPLED`: it leaves the
    /// in-use profile here), or a thread that does not batch.
    ///
    /// # Safety
    /// As [`Self::realloc_by_class`]; `c` is the block's class and `id` the
    /// owner taken from it.
    #[inline(never)]
    unsafe fn realloc_by_class_slow(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        c: Place,
        id: u32,
    ) -> *mut u8 {
        let size = layout.size();
        let nc = place(new_size);
        let owner = owner_from_compact(id & !COMPACT_SAMPLED);
        // SAFETY: the realloc path for a live block charged to `owner`;
        // finished once below.
        let Some(charge) = (unsafe { begin_host_realloc(owner, size, new_size) }) else {
            // SAFETY: the block is still live and its place is `c`.
            unsafe { put_owner(ptr, c, id) };
            return null_mut();
        };
        // A sampled block's realloc is its free and a new allocation: out of
        // the in-use profile before its address can be reused, back if it fails.
        let taken = profile::take_sampled(ptr, id & COMPACT_SAMPLED != 0);
        // SAFETY: `ptr` and `layout` are the caller's; `new_size` is non-zero
        // and, with the same alignment, a valid layout (GlobalAlloc contract).
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        // SAFETY: finishes the charge; a failed realloc leaves everything as it was.
        unsafe { finish_host_realloc(charge, size, new_size, !p.is_null()) };
        if p.is_null() {
            profile::restore_sampled(taken);
            // SAFETY: the old block is still live and its place is `c`.
            unsafe { put_owner(ptr, c, id) };
            return p;
        }
        let mark = profile::compact_mark(profile::sample_alloc(p, new_size, || owner));
        // SAFETY: the moved (or grown) block is live and of class `nc` (host:K1).
        if !unsafe { put_owner(p, nc, owner.to_compact() | mark) } {
            if mark != 0 {
                profile::sampled_free(p);
            }
            // Nowhere to keep the owner: the block leaves tracking now.
            // SAFETY: the charge for this block, made to `owner`.
            unsafe { charge_host_free(owner, new_size) };
        }
        p
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// Frees a block placed by class: the owner taken (its table entry
    /// zeroed; with `OFF`, only when it holds an owner, so that a block never
    /// tracked does not dirty its leaf's page), then the batch when the owner
    /// is the thread's current scope, else [`Self::dealloc_by_class_other`].
    ///
    /// # Safety
    /// `ptr` is a live block of this layout, so of class `class(size)`, its
    /// owner kept by class (host:O1, host:O2); the owner is taken before the
    /// block goes back to the inner allocator, and charged with the size it
    /// was charged.
    #[inline(always)]
    unsafe fn dealloc_by_class<const OFF: bool>(&self, ptr: *mut u8, layout: Layout) {
        let size = layout.size();
        // SAFETY: the contract.
        unsafe {
            let id = take_owner::<OFF>(ptr, place(size));
            if id == host_fast_id() {
                // The thread's current scope: the batch (applied out of
                // line when due, with the free as a tail call).
                if alloc_scope::host_fast_free_due(size) {
                    return self.dealloc_flush(ptr, layout);
                }
            } else if id != 0 {
                // Another scope's block, a thread that does not batch, or a
                // sampled block (its owner carries `COMPACT_SAMPLED`, above
                // every fast-path word).
                return self.dealloc_by_class_other(ptr, layout, id);
            }
            // (0: untracked, charged nowhere.)
            self.inner.dealloc(ptr, layout);
        }
    }

    /// The rest of a free placed by class whose owner `id` (not 0) was just
    /// taken while tracking is off: as the fast path from its compare on.
    ///
    /// # Safety
    /// As [`Self::dealloc_by_class`], after its `take_owner`.
    #[inline(never)]
    unsafe fn dealloc_owned(&self, ptr: *mut u8, layout: Layout, id: u32) {
        // SAFETY: the contract.
        unsafe {
            if id == host_fast_id() {
                if alloc_scope::host_fast_free_due(layout.size()) {
                    return self.dealloc_flush(ptr, layout);
                }
                return self.inner.dealloc(ptr, layout);
            }
            self.dealloc_by_class_other(ptr, layout, id)
        }
    }

    /// Every free of a block that may be placed by class but neither on the
    /// fast path nor untouched, by the gate the caller read: tracking off
    /// (the owner taken without dirtying a leaf, then as the fast path), the
    /// header placement, or the placement not decided yet.
    ///
    /// # Safety
    /// As `dealloc`.
    #[inline(never)]
    unsafe fn dealloc_other(&self, ptr: *mut u8, layout: Layout, gate: u8) {
        match gate & GATE_MODE {
            // Tracking off (every by-class gate but the fast path's).
            // SAFETY: the caller's live block, placed by class.
            GATE_CLASSES => unsafe { self.dealloc_by_class::<true>(ptr, layout) },
            // SAFETY: the caller's live block; the header placement.
            GATE_HEADER => unsafe { self.dealloc_header(ptr, layout) },
            // SAFETY: the caller's live block of `layout` (the placement is
            // decided there, so the free that follows is one of the above).
            _ => unsafe { self.dealloc_undecided(ptr, layout) },
        }
    }

    /// `dealloc` of a block kept by class whose owner `id` (already taken) is
    /// not the thread's fast-path word: a sampled block goes to
    /// [`Self::dealloc_sampled`], any other is charged to its owner.
    ///
    /// # Safety
    /// As `dealloc`, for a block kept by class whose owner was just taken.
    #[inline(never)]
    unsafe fn dealloc_by_class_other(&self, ptr: *mut u8, layout: Layout, id: u32) {
        if id & COMPACT_SAMPLED != 0 {
            // SAFETY: the contract, for a block whose owner had the flag.
            return unsafe {
                self.dealloc_sampled(ptr, layout, (id & !COMPACT_SAMPLED) as u64, true)
            };
        }
        // SAFETY: the owner taken from the block and the size it was charged;
        // the block goes back to the inner allocator with its layout.
        unsafe {
            charge_host_free_compact(id, layout.size());
            self.inner.dealloc(ptr, layout);
        }
    }

    /// The rest of a fast-path free whose batch is due: applies the batch,
    /// then frees the block.
    ///
    /// # Safety
    /// As `dealloc`; the block's owner was taken and charged to the batch.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_flush(&self, ptr: *mut u8, layout: Layout) {
        alloc_scope::host_flush();
        // SAFETY: the caller's live block of `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    /// `dealloc` before the placement is decided (out of line, so that the
    /// free keeps no register for it): decides it, then frees as `dealloc`.
    ///
    /// # Safety
    /// As `dealloc`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_undecided(&self, ptr: *mut u8, layout: Layout) {
        if self.by_class(layout) {
            // SAFETY: the contract; the placement is now decided (by class).
            unsafe { self.dealloc(ptr, layout) }
        } else {
            // SAFETY: the contract; the owner is in the header.
            unsafe { self.dealloc_header(ptr, layout) }
        }
    }

    /// `dealloc` of a block whose owner is in its header (out of line, so
    /// that the by-class free keeps a short prologue).
    ///
    /// # Safety
    /// As `dealloc`, for a block not placed by class.
    #[inline(never)]
    unsafe fn dealloc_header(&self, ptr: *mut u8, layout: Layout) {
        let (outer, h) = outer_unchecked(layout);
        // SAFETY: `ptr` came from `alloc*` with this layout (GlobalAlloc contract),
        // so the owner word sits at `ptr - 8` and the inner block starts at
        // `ptr - h` with layout `outer` (host:H1, host:H2).
        // `charge_host_free`'s contract: the owner and size this allocator
        // charged for this block.
        unsafe {
            let bits = ptr.sub(WORD).cast::<u64>().read();
            if bits & WORD_SAMPLED != 0 {
                return self.dealloc_sampled(ptr, layout, bits & !WORD_SAMPLED, false);
            }
            charge_host_free(ScopeId::from_bits(bits), layout.size());
            self.inner.dealloc(ptr.sub(h), outer);
        }
    }

    /// `dealloc` of a sampled block (its owner carries the sampled bit; `bits`
    /// is the owner without it, a compact id when `by_class`): out of the
    /// in-use profile first, while its address cannot be reused yet, then
    /// charged to its owner once and freed.
    ///
    /// # Safety
    /// As `dealloc`, for a block whose owner had the sampled bit.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_sampled(&self, ptr: *mut u8, layout: Layout, bits: u64, by_class: bool) {
        profile::sampled_free(ptr);
        // SAFETY: as in `dealloc` (the owner, the size it was charged, the
        // inner block and layout), with the sampled bit removed.
        unsafe {
            if by_class {
                charge_host_free_compact(bits as u32, layout.size());
                self.inner.dealloc(ptr, layout);
            } else {
                let (outer, h) = outer_unchecked(layout);
                charge_host_free(ScopeId::from_bits(bits), layout.size());
                self.inner.dealloc(ptr.sub(h), outer);
            }
        }
    }
}

/// The rest of [`TrackingAllocator::alloc_by_class`] when the heap
/// profiler's countdown ran out (`kept`: the sample, or a fresh interval;
/// the owner rewritten with `COMPACT_SAMPLED` when sampled; the charge), or
/// when the side table could not keep the owner (`!kept`: the block is
/// untracked; the countdown still steps). Returns `p` (a tail call of the
/// fast path).
///
/// # Safety
/// As the fast path: `p` a live block of `size` bytes and class
/// `class(size)` (host:K1), not yet returned to the caller, `id` the
/// thread's fast-path word (not `NOT_FAST`); `kept` says whether `id` was
/// kept as its owner (then it is charged once here), and then the
/// countdown has already run out.
#[cold]
#[inline(never)]
unsafe fn alloc_fast_sampled(p: *mut u8, size: usize, id: u32, kept: bool) -> *mut u8 {
    if !kept {
        if alloc_scope::host_sample_due(size) {
            let mark = profile::compact_mark(profile::take_due(p, size, alloc_scope::current()));
            if mark != 0 {
                // Untracked (nowhere to keep the owner): out of the profile.
                profile::sampled_free(p);
            }
        }
        return p;
    }
    let mark = profile::compact_mark(profile::take_due(p, size, alloc_scope::current()));
    // SAFETY: the contract; the owner's slot exists (it was just written),
    // so the rewrite keeps it, and no other thread sees the block yet.
    unsafe {
        if mark != 0 {
            put_owner(p, place(size), id | mark);
        }
        host_fast_charge(size);
    }
    p
}

/// The rest of [`TrackingAllocator::alloc_by_class`] when the block's
/// side-table entry does not exist yet: makes it (then the fast path's
/// rest: the countdown and the charge), or leaves the block untracked when
/// the table cannot reach it. Returns `p`.
///
/// # Safety
/// As [`alloc_fast_sampled`], with `c` the place of `size` (the table).
#[cold]
#[inline(never)]
unsafe fn alloc_fast_new_entry(p: *mut u8, size: usize, c: Place, id: u32) -> *mut u8 {
    let kept = put_in_table(p, c, id);
    if kept && !alloc_scope::host_sample_due(size) {
        // SAFETY: kept with the thread's fast-path word; charged once.
        unsafe { host_fast_charge(size) };
        return p;
    }
    // SAFETY: the contract; when kept, the countdown ran out.
    unsafe { alloc_fast_sampled(p, size, id, kept) }
}

/// Applies the thread's batch, then returns `p` (the tail of the fast
/// path's allocation when the batch is due).
#[cold]
#[inline(never)]
fn flush_then(p: *mut u8) -> *mut u8 {
    alloc_scope::host_flush();
    p
}

/// The rest of [`TrackingAllocator::alloc_off`] when the heap profiler's
/// countdown ran out: the owner is `COMPACT_SAMPLED` (untracked, sampled)
/// or stays 0.
///
/// # Safety
/// `p` is a live block of `size` bytes (host:K1), not yet returned to the
/// caller.
#[cold]
#[inline(never)]
unsafe fn alloc_off_sampled(p: *mut u8, size: usize) {
    let c = place(size);
    let mark = profile::compact_mark(profile::take_due(p, size, ScopeId::UNTRACKED));
    if let Some(off) = c.slack() {
        // SAFETY: the contract; the slack past `size` is this allocator's.
        unsafe { crate::owner::write_slack(p, off, mark) };
    } else if mark != 0 {
        // SAFETY: the contract.
        if !unsafe { put_owner(p, c, mark) } {
            // Nowhere to keep the mark: out of the in-use profile now.
            profile::sampled_free(p);
        }
    }
}

/// A fast-path realloc the inner allocator refused: the old block's owner
/// (the thread's fast-path word) goes back to its place; null.
///
/// # Safety
/// `ptr` is a live block of `size` bytes whose owner, the thread's fast-path
/// word, was taken for the refused realloc.
#[cold]
#[inline(never)]
unsafe fn realloc_fast_failed(ptr: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: the contract; the old block is still live and its place is
    // `place(size)`, where its owner was.
    unsafe { put_owner(ptr, place(size), host_fast_id()) };
    null_mut()
}

/// A fast-path realloc whose new block's table region does not exist yet
/// (or cannot): makes it, or the block leaves tracking; then the sample and
/// the charge, as [`realloc_fast_sampled`].
///
/// # Safety
/// `p` is the live block the realloc from `old` to `new` bytes returned, not
/// yet handed back; `id` the thread's fast-path word; nothing charged yet.
#[cold]
#[inline(never)]
unsafe fn realloc_fast_new_entry(p: *mut u8, old: usize, new: usize, id: u32) -> *mut u8 {
    if put_in_table(p, place(new), id) {
        if alloc_scope::host_sample_due(new) {
            // SAFETY: the contract, the owner kept.
            return unsafe { realloc_fast_sampled(p, old, new, id) };
        }
        // SAFETY: the contract.
        unsafe { host_fast_realloc_charge(old, new) };
        return p;
    }
    // Nowhere to keep the owner: charged, then out of tracking at once (the
    // realloc is the scope's; the block leaves it). Still a sampling step.
    // SAFETY: the contract.
    unsafe {
        host_fast_realloc_charge(old, new);
        charge_host_free_compact(id, new);
    }
    if alloc_scope::host_sample_due(new) && profile::take_due(p, new, alloc_scope::current()) {
        // Untracked: out of the profile at once.
        profile::sampled_free(p);
    }
    p
}

/// A fast-path realloc whose sampling countdown ran out: the sample, the
/// owner's mark, the charge.
///
/// # Safety
/// `p` is the live block the realloc from `old` to `new` bytes returned, its
/// owner kept as `id` (the thread's fast-path word); not charged yet.
#[cold]
#[inline(never)]
unsafe fn realloc_fast_sampled(p: *mut u8, old: usize, new: usize, id: u32) -> *mut u8 {
    let mark = profile::compact_mark(profile::take_due(p, new, alloc_scope::current()));
    // SAFETY: the contract; the owner's slot exists (it was just written),
    // so the rewrite keeps it, and no other thread sees the block yet.
    unsafe {
        if mark != 0 {
            put_owner(p, place(new), id | mark);
        }
        host_fast_realloc_charge(old, new);
    }
    p
}

/// Keeps `id` in the side-table entry of block `p` whose place `c` is the
/// table; false when the table cannot hold it.
#[inline(always)]
fn put_in_table(p: *mut u8, c: Place, id: u32) -> bool {
    match crate::owner::entry_or_create(p, c) {
        Some(e) => {
            e.store(id, Relaxed);
            true
        }
        None => false,
    }
}

/// [`put_owner`] without making the table's region: false when the owner's
/// place is the table and its region does not exist yet (nothing stored).
/// The fast paths' store: one test of the place, then the slack or the
/// entry.
///
/// # Safety
/// As [`put_owner`].
#[inline(always)]
unsafe fn put_owner_existing(p: *mut u8, c: Place, id: u32) -> bool {
    if let Some(off) = c.slack() {
        // SAFETY: the slack past the request is this allocator's (contract).
        unsafe { crate::owner::write_slack(p, off, id) };
        return true;
    }
    match crate::owner::entry(p, c) {
        Some(e) => {
            e.store(id, Relaxed);
            true
        }
        None => false,
    }
}

/// Keeps `id` as the owner of the block `p` whose request size has place
/// `c` ([`place`]); false when the side table cannot hold it (the block is
/// then untracked).
///
/// # Safety
/// `p` is a live block of a request whose place is `c`, so with its class's
/// usable bytes (host:K1).
#[inline(always)]
unsafe fn put_owner(p: *mut u8, c: Place, id: u32) -> bool {
    if let Some(off) = c.slack() {
        // SAFETY: the slack past the request is this allocator's (contract).
        unsafe { crate::owner::write_slack(p, off, id) };
        return true;
    }
    put_in_table(p, c, id)
}

/// The owner id kept for block `p` whose request size has place `c` (0:
/// untracked), zeroing its table entry: call it just before the block goes
/// back to the inner allocator (host:O1).
///
/// # Safety
/// As [`put_owner`], for a block whose owner was put there, or that was
/// allocated while tracking was off.
#[inline(always)]
unsafe fn take_owner<const OFF: bool>(p: *mut u8, c: Place) -> u32 {
    if let Some(off) = c.slack() {
        // SAFETY: contract.
        return unsafe { crate::owner::read_slack(p, off) };
    }
    match crate::owner::entry(p, c) {
        Some(e) => {
            let id = e.load(Relaxed);
            // While tracking is off, stored only when it is not 0 already:
            // a block that was never tracked (a class never kept in this
            // region) does not dirty its leaf's page. On, the entry nearly
            // always holds an owner: stored without a test.
            if !OFF || id != 0 {
                e.store(0, Relaxed);
            }
            id
        }
        None => 0,
    }
}
