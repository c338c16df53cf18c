//! Per-thread state: the scope this thread is in, and the batches of host and
//! device charges not yet applied to the shared counters.
//!
//! # Exactness
//! A thread applies its batch when the batch's net live bytes leave
//! `[-BATCH_BYTES, BATCH_BYTES]`, after `BATCH_OPS` operations, when it enters
//! or leaves a scope, when it reads statistics, and when it exits. Hence:
//! - single-threaded, every figure is exact (peaks included: a batch carries its
//!   own high-water mark, and a thread applies its batch before it charges a
//!   free to another scope, so the counters see its operations in order);
//! - a block allocated on thread A and freed on thread B before A applied its
//!   batch can make the scope's peak miss up to that batch (at most
//!   `BATCH_BYTES`); calling [`flush`] on A before handing memory over makes
//!   such a peak exact;
//! - with `T` threads charging one scope, counts read while they run lag by at
//!   most `T × BATCH_OPS` operations, and live and peak bytes are within
//!   `(T + 1) × BATCH_BYTES` of the true values; once the threads have left the
//!   scope (or exited, or called [`flush`]) counts and live bytes are exact;
//! - device charges are batched the same way, with [`DEVICE_BATCH_BYTES`] in
//!   place of `BATCH_BYTES`;
//! - a chain with a budget is never batched: its live bytes are exact at every
//!   moment and a hard limit is never overshot.
//!
//! # Thread teardown
//! The state is a `const`, `Drop`-free thread-local, usable at any point of a
//! thread's life. A second thread-local with a destructor flushes the batch when
//! the thread exits; after that, the thread's charges go unbatched to
//! [`ScopeId::UNATTRIBUTED`], and frees to their owner, so nothing is lost.

use core::cell::{Cell, UnsafeCell};

use super::counters::Delta;
use super::id::ScopeId;
use super::registry::REGISTRY;

/// Net live bytes a thread may hold back before applying its batch.
pub const BATCH_BYTES: i64 = 256 << 10;
/// Net device bytes a thread may hold back before applying its device batch:
/// larger than [`BATCH_BYTES`] because device buffers are large (a cache hit
/// of an 8 MiB buffer should not touch shared counters); the cross-thread bound
/// on device live and peak bytes is `(T + 1) × DEVICE_BATCH_BYTES`.
pub const DEVICE_BATCH_BYTES: i64 = 64 << 20;
/// Operations a thread may hold back before applying its batch.
pub const BATCH_OPS: u32 = super::counters::OPS_PER_BATCH;

const NORMAL: u8 = 0;
/// Inside our own bookkeeping (registering the exit hook): charge unbatched.
const REENTRANT: u8 = 1;
/// The exit hook ran: charge unbatched to UNATTRIBUTED.
const TORN_DOWN: u8 = 2;
/// Inside [`untracked`]: new blocks are charged nowhere.
const SUSPENDED: u8 = 3;

pub(crate) struct ThreadState {
    pub(crate) current: Cell<ScopeId>,
    /// The current chain has a budget: charge unbatched.
    pub(crate) direct: Cell<bool>,
    mode: Cell<u8>,
    /// `mode == NORMAL && !direct`, kept in one flag for the fast path.
    fast: Cell<bool>,
    hooked: Cell<bool>,
    batch: UnsafeCell<Delta>,
    /// Device charges, batched the same way.
    device_batch: UnsafeCell<Delta>,
}

impl ThreadState {
    const fn new() -> Self {
        ThreadState {
            current: Cell::new(ScopeId::ROOT),
            direct: Cell::new(false),
            mode: Cell::new(NORMAL),
            fast: Cell::new(true),
            hooked: Cell::new(false),
            batch: UnsafeCell::new(Delta::EMPTY),
            device_batch: UnsafeCell::new(Delta::EMPTY),
        }
    }

    #[inline]
    fn batched(&self) -> bool {
        self.fast.get()
    }

    fn set_mode(&self, mode: u8) {
        self.mode.set(mode);
        self.fast.set(mode == NORMAL && !self.direct.get());
    }

    fn set_direct(&self, direct: bool) {
        self.direct.set(direct);
        self.fast.set(self.mode.get() == NORMAL && !direct);
    }

    /// Runs `f` on this thread's batch.
    #[inline]
    fn with_batch<R>(&self, f: impl FnOnce(&mut Delta) -> R) -> R {
        // SAFETY: the batch is thread-local and `f` (Delta's arithmetic) neither
        // allocates nor re-enters this module, so no other reference to it exists
        // while `f` runs.
        f(unsafe { &mut *self.batch.get() })
    }

    /// Runs `f` on this thread's device batch.
    #[inline]
    fn with_device_batch<R>(&self, f: impl FnOnce(&mut Delta) -> R) -> R {
        // SAFETY: as `with_batch`: thread-local, and `f` does not re-enter.
        f(unsafe { &mut *self.device_batch.get() })
    }
}

thread_local! {
    static STATE: ThreadState = const { ThreadState::new() };
    static EXIT_HOOK: ExitHook = const { ExitHook };
}

/// Flushes the batch when its thread exits.
struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        STATE.with(|s| {
            flush_state(s);
            s.set_mode(TORN_DOWN);
            s.current.set(ScopeId::UNATTRIBUTED);
        });
    }
}

/// Applies this thread's batch to the shared counters.
pub(crate) fn flush_state(s: &ThreadState) {
    let d = s.with_batch(|b| core::mem::replace(b, Delta::EMPTY));
    if !d.is_empty() {
        REGISTRY.apply_batch(s.current.get().slot(), &d, false);
    }
    let d = s.with_device_batch(|b| core::mem::replace(b, Delta::EMPTY));
    if !d.is_empty() {
        REGISTRY.apply_batch(s.current.get().slot(), &d, true);
    }
    if !s.hooked.get() && s.mode.get() == NORMAL {
        s.hooked.set(true);
        // Registering the exit hook may allocate (std's fallback list): those
        // allocations are charged unbatched while the mode says REENTRANT.
        s.set_mode(REENTRANT);
        let _ = EXIT_HOOK.try_with(|_| ());
        s.set_mode(NORMAL);
    }
}

/// Applies the calling thread's pending host charges now, so that statistics
/// read from any thread include them.
pub fn flush() {
    STATE.with(flush_state);
}

/// Runs `f` with the calling thread's new allocations charged nowhere (frees of
/// tracked blocks are still charged back to their owners). The registry uses it
/// for its own bookkeeping (scope names, reports), so that opening a scope or
/// printing a report does not show up in the figures it reports.
pub fn untracked<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            STATE.with(|s| s.set_mode(self.0));
        }
    }
    let prev = STATE.with(|s| {
        let prev = s.mode.get();
        if prev == NORMAL {
            flush_state(s);
            s.set_mode(SUSPENDED);
        }
        prev
    });
    let _restore = Restore(prev);
    f()
}

/// The scope the calling thread is in ([`ScopeId::ROOT`] outside any scope).
#[inline]
pub fn current() -> ScopeId {
    STATE.with(|s| s.current.get())
}

/// Charges a host allocation of `bytes` to the calling thread's scope and
/// returns the owner to store with the block, or `None` when a hard budget
/// refuses it (nothing is charged then).
///
/// Allocator path: no allocation, lock or panic.
#[inline]
pub fn charge_host_alloc(bytes: usize) -> Option<ScopeId> {
    STATE.with(|s| {
        if !s.batched() {
            return charge_host_alloc_slow(s, bytes);
        }
        let flush = s.with_batch(|b| {
            b.alloc(bytes as u64);
            b.left == 0 || b.live > BATCH_BYTES
        });
        if flush {
            flush_state(s);
        }
        Some(s.current.get())
    })
}

#[cold]
#[inline(never)]
fn charge_host_alloc_slow(s: &ThreadState, bytes: usize) -> Option<ScopeId> {
    if s.mode.get() == SUSPENDED {
        return Some(ScopeId::UNTRACKED);
    }
    let owner = s.current.get();
    let mut d = Delta::EMPTY;
    d.alloc(bytes as u64);
    REGISTRY.charge(owner.slot(), &d, false).then_some(owner)
}

/// Charges the free of a host block of `bytes` back to `owner`, the scope that
/// allocated it, whichever thread or scope frees it.
///
/// Allocator path: no allocation, lock or panic.
#[inline]
pub fn charge_host_free(owner: ScopeId, bytes: usize) {
    if !owner.is_tracked() {
        return;
    }
    STATE.with(|s| {
        if s.batched() && owner == s.current.get() {
            let flush = s.with_batch(|b| {
                b.free(bytes as u64);
                b.left == 0 || b.live < -BATCH_BYTES
            });
            if flush {
                flush_state(s);
            }
        } else {
            // Apply this thread's earlier charges first, so that the shared
            // counters see this thread's operations in program order.
            if s.mode.get() == NORMAL {
                flush_state(s);
            }
            charge_remote(owner, bytes as u64);
        }
    })
}

#[cold]
#[inline(never)]
fn charge_remote(owner: ScopeId, bytes: u64) {
    let mut d = Delta::EMPTY;
    d.free(bytes);
    REGISTRY.charge(owner.slot(), &d, false);
}

/// Charges a reallocation from `old` to `new` bytes to `owner`, which keeps the
/// block. Returns false when a hard budget refuses the growth (nothing charged).
///
/// Allocator path: no allocation, lock or panic.
#[inline]
pub fn charge_host_realloc(owner: ScopeId, old: usize, new: usize) -> bool {
    if !owner.is_tracked() {
        return true;
    }
    STATE.with(|s| {
        if s.batched() && owner == s.current.get() {
            let flush = s.with_batch(|b| {
                b.realloc(old as u64, new as u64);
                b.live > BATCH_BYTES || b.left == 0 || b.live < -BATCH_BYTES
            });
            if flush {
                flush_state(s);
            }
            true
        } else {
            if s.mode.get() == NORMAL {
                flush_state(s);
            }
            charge_realloc_slow(owner, old as u64, new as u64)
        }
    })
}

#[cold]
#[inline(never)]
fn charge_realloc_slow(owner: ScopeId, old: u64, new: u64) -> bool {
    let mut d = Delta::EMPTY;
    d.realloc(old, new);
    REGISTRY.charge(owner.slot(), &d, false)
}

/// Takes back a [`charge_host_alloc`] whose inner allocation then failed.
pub fn cancel_host_alloc(owner: ScopeId, bytes: usize) {
    if !owner.is_tracked() {
        return;
    }
    STATE.with(|s| {
        if s.batched() && owner == s.current.get() {
            s.with_batch(|b| b.undo_alloc(bytes as u64));
        } else {
            let mut d = Delta::EMPTY;
            d.undo_alloc(bytes as u64);
            REGISTRY.apply_batch(owner.slot(), &d, false);
        }
    })
}

/// Takes back a [`charge_host_realloc`] whose inner reallocation then failed.
pub fn cancel_host_realloc(owner: ScopeId, old: usize, new: usize) {
    if !owner.is_tracked() {
        return;
    }
    STATE.with(|s| {
        if s.batched() && owner == s.current.get() {
            s.with_batch(|b| b.undo_realloc(old as u64, new as u64));
        } else {
            let mut d = Delta::EMPTY;
            d.undo_realloc(old as u64, new as u64);
            REGISTRY.apply_batch(owner.slot(), &d, false);
        }
    })
}

/// Charges `bytes` of device memory to the calling thread's scope chain and
/// returns the owner; the device allocator keeps it with the buffer and passes it
/// to [`charge_device_free`]. Batched per thread like host charges (same bounds),
/// so a cache hit pays no shared atomic.
pub fn charge_device_alloc(bytes: u64) -> ScopeId {
    STATE.with(|s| {
        let owner = s.current.get();
        if s.batched() {
            let flush = s.with_device_batch(|b| {
                b.alloc(bytes);
                b.left == 0 || b.live > DEVICE_BATCH_BYTES
            });
            if flush {
                flush_state(s);
            }
        } else {
            let mut d = Delta::EMPTY;
            d.alloc(bytes);
            REGISTRY.charge(owner.slot(), &d, true);
        }
        owner
    })
}

/// Charges the release of `bytes` of device memory back to `owner`.
pub fn charge_device_free(owner: ScopeId, bytes: u64) {
    if !owner.is_tracked() {
        return;
    }
    STATE.with(|s| {
        if s.batched() && owner == s.current.get() {
            let flush = s.with_device_batch(|b| {
                b.free(bytes);
                b.left == 0 || b.live < -DEVICE_BATCH_BYTES
            });
            if flush {
                flush_state(s);
            }
        } else {
            if s.mode.get() == NORMAL {
                flush_state(s);
            }
            let mut d = Delta::EMPTY;
            d.free(bytes);
            REGISTRY.charge(owner.slot(), &d, true);
        }
    })
}

/// Makes `id` the calling thread's scope, flushing the batch of the previous
/// one. Returns the previous scope and its `direct` flag.
pub(crate) fn switch_to(id: ScopeId, direct: bool) -> (ScopeId, bool) {
    STATE.with(|s| {
        flush_state(s);
        let prev = (s.current.get(), s.direct.get());
        if s.mode.get() != TORN_DOWN {
            s.current.set(id);
            s.set_direct(direct);
        }
        prev
    })
}
