//! `TrackingAllocator`: the `#[global_allocator]` that charges every host heap
//! allocation to the current scope.
//!
//! Every path here is an allocator path: it never allocates through the global
//! allocator, never panics, never takes a lock, and uses checked arithmetic. A
//! layout whose size plus header overflows gets null, as `GlobalAlloc` allows.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use alloc_core::scope::{
    ScopeId, cancel_host_alloc, cancel_host_realloc, charge_host_alloc, charge_host_free,
    charge_host_realloc,
};

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

/// Whether a `TrackingAllocator` is this process's global allocator: allocates
/// a small box inside a probe scope and checks that the scope saw it.
pub fn is_installed() -> bool {
    let was = tracking_enabled();
    set_tracking(true);
    let g = alloc_core::scope::scope("alloc-host install probe");
    let b = std::hint::black_box(Box::new(0u64));
    let seen = g.stats().allocations > 0;
    drop(b);
    drop(g);
    set_tracking(was);
    seen
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
pub struct TrackingAllocator<A: GlobalAlloc = DefaultInner> {
    inner: A,
}

#[cfg(feature = "mimalloc")]
impl TrackingAllocator<crate::Mimalloc> {
    /// Tracking over mimalloc.
    pub const fn new() -> Self {
        TrackingAllocator {
            inner: crate::Mimalloc,
        }
    }
}

#[cfg(not(feature = "mimalloc"))]
impl TrackingAllocator<std::alloc::System> {
    /// Tracking over the system allocator (the `mimalloc` feature is off).
    pub const fn new() -> Self {
        TrackingAllocator {
            inner: std::alloc::System,
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
        TrackingAllocator { inner }
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
        let owner = if TRACKING.load(Relaxed) {
            match charge_host_alloc(layout.size()) {
                Some(owner) => owner,
                None => return null_mut(),
            }
        } else {
            ScopeId::UNTRACKED
        };
        let base = get(&self.inner, outer);
        if base.is_null() {
            cancel_host_alloc(owner, layout.size());
            return base;
        }
        // SAFETY: `base` is a live block of `outer.size() = size + h` bytes, so
        // `base + h` is inside it or one past its end (size 0), and the 8 bytes
        // before it lie in the header (h >= 8). `base` is aligned to max(8,
        // align) and h is a multiple of 8, so `user - 8` is 8-aligned (H1, H2).
        unsafe {
            let user = base.add(h);
            user.sub(WORD).cast::<u64>().write(owner.to_bits());
            user
        }
    }
}

// SAFETY: every method returns blocks obtained from `inner` (offset by the header
// size `h`, inside the inner block) and passes the inner pointer and layout back
// unchanged on dealloc/realloc, so `inner`'s GlobalAlloc contract carries over;
// the returned pointer meets the caller's layout (header.rs, H1).
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `inner.alloc` gets a non-zero-size layout (size + h, h >= 8).
        unsafe { self.alloc_with(layout, |a, l| a.alloc(l)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`; the inner allocator zeroes (lazily, for fresh pages)
        // and only the header word is written afterwards.
        unsafe { self.alloc_with(layout, |a, l| a.alloc_zeroed(l)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (outer, h) = outer_unchecked(layout);
        // SAFETY: `ptr` came from `alloc*` with this layout (GlobalAlloc contract),
        // so the owner word sits at `ptr - 8` and the inner block starts at
        // `ptr - h` with layout `outer` (H1, H2).
        unsafe {
            let owner = ScopeId::from_bits(ptr.sub(WORD).cast::<u64>().read());
            charge_host_free(owner, layout.size());
            self.inner.dealloc(ptr.sub(h), outer);
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (outer, h) = outer_unchecked(layout);
        let Some(new_outer) = outer_size(new_size, h, layout.align()) else {
            return null_mut();
        };
        // SAFETY: as in `dealloc`, the owner word is at `ptr - 8`.
        let owner = ScopeId::from_bits(unsafe { ptr.sub(WORD).cast::<u64>().read() });
        if !charge_host_realloc(owner, layout.size(), new_size) {
            return null_mut();
        }
        // SAFETY: the inner block is `ptr - h` with layout `outer`; `new_outer`
        // is non-zero and valid for its alignment (checked by outer_size). The
        // inner realloc keeps the first min(old, new) + h bytes, header included.
        let base = unsafe { self.inner.realloc(ptr.sub(h), outer, new_outer) };
        if base.is_null() {
            cancel_host_realloc(owner, layout.size(), new_size);
            return base;
        }
        // SAFETY: `base` is the moved inner block of `new_outer = new_size + h`
        // bytes; `base + h` is the user pointer (H1).
        unsafe { base.add(h) }
    }
}
