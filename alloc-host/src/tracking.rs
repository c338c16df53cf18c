//! `TrackingAllocator`: the `#[global_allocator]` that charges every host heap
//! allocation to the current scope.
//!
//! Every path here is an allocator path: it never allocates through the global
//! allocator, never panics, never takes a lock, and uses checked arithmetic. A
//! layout whose size plus header overflows gets null, as `GlobalAlloc` allows.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use alloc_scope::{
    ScopeId, begin_host_alloc, begin_host_realloc, charge_host_free, charge_host_free_compact,
    finish_host_alloc, finish_host_realloc, mark_host_allocator_seen, owner_from_compact,
};

use crate::classes::Class;
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

static TRACKING: AtomicBool = AtomicBool::new(true);

/// Switches tracking on or off for the whole process at run time. While off,
/// allocations are charged nowhere (their frees are ignored later too); blocks
/// allocated while on are still charged back when freed, so live figures stay
/// consistent. Off costs one relaxed load and one store per allocation.
pub fn set_tracking(on: bool) {
    TRACKING.store(on, Relaxed);
}

/// Whether tracking is on.
pub fn tracking_enabled() -> bool {
    TRACKING.load(Relaxed)
}

/// Whether a `TrackingAllocator` is this process's global allocator. Every
/// path of the allocator (tracking on or off, inside `untracked` too) notes
/// that it ran; this allocates one small box if nothing was noted yet. It
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
}

#[cfg(feature = "mimalloc")]
impl TrackingAllocator<crate::Mimalloc> {
    /// Tracking over mimalloc, owners kept by size class.
    pub const fn new() -> Self {
        TrackingAllocator {
            inner: crate::Mimalloc,
            by_class: true,
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
        }
    }

    /// The size class that keeps this layout's owner, or `None` for the
    /// header (host:O2: a function of the layout and the process-wide mode only).
    #[inline(always)]
    fn class_of(&self, layout: Layout) -> Option<Class> {
        #[cfg(feature = "mimalloc")]
        if self.by_class
            && layout.align() <= 8
            && crate::classes::mode() == crate::classes::Mode::Classes
        {
            return crate::classes::class(layout.size());
        }
        let _ = layout;
        None
    }

    /// Charges and gets a block whose owner is kept by class `c`.
    #[inline(always)]
    unsafe fn alloc_by_class(
        &self,
        layout: Layout,
        c: Class,
        get: impl FnOnce(&A, Layout) -> *mut u8,
    ) -> *mut u8 {
        let size = layout.size();
        if !TRACKING.load(Relaxed) {
            mark_host_allocator_seen();
            let p = get(&self.inner, layout);
            if !p.is_null() {
                let mark =
                    profile::compact_mark(profile::sample_alloc(p, size, ScopeId::UNTRACKED));
                // SAFETY: a live block of class `c` (host:K1).
                if !unsafe { put_owner(p, size, c, mark) } && mark != 0 {
                    profile::sampled_free(p);
                }
            }
            return p;
        }
        // SAFETY: the global allocator's allocation path; finished once below.
        let Some(charge) = (unsafe { begin_host_alloc(size) }) else {
            return null_mut();
        };
        let p = get(&self.inner, layout);
        let mark =
            profile::compact_mark(!p.is_null() && profile::sample_alloc(p, size, charge.owner()));
        // SAFETY: a live block of class `c` (host:K1) when not null.
        let kept =
            !p.is_null() && unsafe { put_owner(p, size, c, charge.owner().to_compact() | mark) };
        if !kept && mark != 0 {
            profile::sampled_free(p);
        }
        // SAFETY: finishes the charge begun above: a block that is null, or
        // whose owner has nowhere to go (it stays untracked), is charged nothing.
        unsafe { finish_host_alloc(charge, size, kept) };
        p
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
        if !TRACKING.load(Relaxed) {
            mark_host_allocator_seen();
            let base = get(&self.inner, outer);
            if base.is_null() {
                return base;
            }
            // SAFETY: `base + h` is the user pointer of this live block (host:H1).
            let user = unsafe { base.add(h) };
            let mark = profile::word_mark(profile::sample_alloc(
                user,
                layout.size(),
                ScopeId::UNTRACKED,
            ));
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
        let mark = profile::word_mark(profile::sample_alloc(user, layout.size(), charge.owner()));
        // SAFETY: `base` is a live block of `outer.size() = size + h` bytes.
        unsafe { write_owner(base, h, charge.owner().to_bits() | mark) }
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
        if let Some(c) = self.class_of(layout) {
            // SAFETY: `layout` is the caller's (non-zero size, GlobalAlloc).
            return unsafe { self.alloc_by_class(layout, c, |a, l| a.alloc(l)) };
        }
        // SAFETY: `inner.alloc` gets a non-zero-size layout (size + h, h >= 8).
        unsafe { self.alloc_with(layout, |a, l| a.alloc(l)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(c) = self.class_of(layout) {
            // SAFETY: as `alloc`; the inner allocator zeroes, and only the
            // slack past the caller's bytes is written afterwards.
            return unsafe { self.alloc_by_class(layout, c, |a, l| a.alloc_zeroed(l)) };
        }
        // SAFETY: as `alloc`; the inner allocator zeroes (lazily, for fresh pages)
        // and only the header word is written afterwards.
        unsafe { self.alloc_with(layout, |a, l| a.alloc_zeroed(l)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(c) = self.class_of(layout) {
            // SAFETY: `ptr` is a live block of this layout, so of class `c`,
            // its owner kept by class (host:O1, host:O2); `charge_host_free` gets the
            // owner and size charged for it.
            unsafe {
                let id = get_owner(ptr, layout.size(), c);
                if id & ScopeId::COMPACT_FREE_BIT != 0 {
                    return self.dealloc_sampled(
                        ptr,
                        layout,
                        (id & !ScopeId::COMPACT_FREE_BIT) as u64,
                        true,
                    );
                }
                charge_host_free_compact(id, layout.size());
                self.inner.dealloc(ptr, layout);
            }
            return;
        }
        let (outer, h) = outer_unchecked(layout);
        // SAFETY: `ptr` came from `alloc*` with this layout (GlobalAlloc contract),
        // so the owner word sits at `ptr - 8` and the inner block starts at
        // `ptr - h` with layout `outer` (host:H1, host:H2).
        // `charge_host_free`'s contract: the owner and size this allocator
        // charged for this block.
        unsafe {
            let bits = ptr.sub(WORD).cast::<u64>().read();
            if bits & ScopeId::FREE_BIT != 0 {
                return self.dealloc_sampled(ptr, layout, bits & !ScopeId::FREE_BIT, false);
            }
            charge_host_free(ScopeId::from_bits(bits), layout.size());
            self.inner.dealloc(ptr.sub(h), outer);
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let Some(c) = self.class_of(layout) {
            // SAFETY: the caller's live block of `layout` (GlobalAlloc contract).
            return unsafe { self.realloc_by_class(ptr, layout, c, new_size) };
        }
        let (outer, h) = outer_unchecked(layout);
        let Some(new_outer) = outer_size(new_size, h, layout.align()) else {
            return null_mut();
        };
        // SAFETY: as in `dealloc`, the owner word is at `ptr - 8`.
        let bits = unsafe { ptr.sub(WORD).cast::<u64>().read() };
        let owner = ScopeId::from_bits(bits & !ScopeId::FREE_BIT);
        // SAFETY: the global allocator's realloc path, for a live block charged
        // to `owner`; finished exactly once below.
        let Some(charge) = (unsafe { begin_host_realloc(owner, layout.size(), new_size) }) else {
            return null_mut();
        };
        // A sampled block's realloc is its free and a new allocation: out of
        // the in-use profile before its address can be reused, back if it fails.
        let taken = profile::take_sampled(ptr, bits & ScopeId::FREE_BIT != 0);
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
        let now = profile::sample_alloc(user, new_size, owner);
        if bits & ScopeId::FREE_BIT != 0 || now {
            // SAFETY: the owner word of the moved block, at `user - 8` (host:H2).
            unsafe { write_owner(base, h, owner.to_bits() | profile::word_mark(now)) };
        }
        user
    }
}

impl<A: GlobalAlloc> TrackingAllocator<A> {
    /// `realloc` of a block whose owner is kept by class.
    ///
    /// # Safety
    /// `ptr` is a live block of `layout` from this allocator, of class `c`.
    #[inline(always)]
    unsafe fn realloc_by_class(
        &self,
        ptr: *mut u8,
        layout: Layout,
        c: Class,
        new_size: usize,
    ) -> *mut u8 {
        let Some(nc) = crate::classes::class(new_size) else {
            return null_mut();
        };
        // SAFETY: a live block of class `c` (contract).
        let id = unsafe { get_owner(ptr, layout.size(), c) };
        let owner = owner_from_compact(id & !ScopeId::COMPACT_FREE_BIT);
        // SAFETY: the realloc path for a live block charged to `owner`;
        // finished once below.
        let Some(charge) = (unsafe { begin_host_realloc(owner, layout.size(), new_size) }) else {
            return null_mut();
        };
        // A sampled block's realloc is its free and a new allocation: out of
        // the in-use profile before its address can be reused, back if it fails.
        let taken = profile::take_sampled(ptr, id & ScopeId::COMPACT_FREE_BIT != 0);
        // SAFETY: `ptr` and `layout` are the caller's; `new_size` is non-zero
        // and, with the same alignment, a valid layout (`class` accepted it).
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        // SAFETY: finishes the charge; a failed realloc leaves everything as it was.
        unsafe { finish_host_realloc(charge, layout.size(), new_size, !p.is_null()) };
        if p.is_null() {
            profile::restore_sampled(taken);
            return p;
        }
        let mark = profile::compact_mark(profile::sample_alloc(p, new_size, owner));
        // SAFETY: the moved (or grown) block is live and of class `nc` (host:K1).
        if !unsafe { put_owner(p, new_size, nc, owner.to_compact() | mark) } {
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
    /// `dealloc` of a sampled block (its owner carries the sampled bit; `bits`
    /// is the owner without it, a compact id when `by_class`): out of the
    /// in-use profile first, while its address cannot be reused yet.
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

/// Keeps `id` as the owner of the block `p` of `size` bytes and class `c`;
/// false when the side table cannot hold it (the block is then untracked).
///
/// # Safety
/// `p` is a live block of `size` bytes with `c.size` usable bytes (host:K1).
#[inline(always)]
unsafe fn put_owner(p: *mut u8, size: usize, c: Class, id: u32) -> bool {
    if crate::owner::in_slack(size, c) {
        // SAFETY: the slack past `size` is this allocator's (contract).
        unsafe { crate::owner::write_slack(p, c, id) };
        return true;
    }
    match crate::owner::entry(p, c, true) {
        Some(e) => {
            e.store(id, Relaxed);
            true
        }
        None => false,
    }
}

/// The owner id kept for block `p` of `size` bytes and class `c` (0: untracked).
///
/// # Safety
/// As [`put_owner`], for a block whose owner was put there.
#[inline(always)]
unsafe fn get_owner(p: *mut u8, size: usize, c: Class) -> u32 {
    if crate::owner::in_slack(size, c) {
        // SAFETY: contract.
        return unsafe { crate::owner::read_slack(p, c) };
    }
    crate::owner::entry(p, c, false).map_or(0, |e| e.load(Relaxed))
}
