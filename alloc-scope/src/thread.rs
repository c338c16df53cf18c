//! Per-thread state: the stack of scopes this thread entered, and the batches
//! of host and device charges not yet applied to the shared counters.
//!
//! # Which scope a thread is in
//! Each thread keeps a stack of the guards it holds (see
//! [`ScopeGuard`](super::ScopeGuard)). The thread's current scope is the most
//! recently entered scope whose guard is still alive; the process root when it
//! holds none. Dropping a guard removes *its* entry wherever it is in the stack,
//! so guards may drop in any order (a `Vec` of guards, struct fields, two tasks
//! interleaved on one thread): dropping an older guard while a newer one lives
//! leaves the thread in the newer scope, and no scope ever becomes current again
//! after its guard dropped. Beyond [`STACK_MAX`] nested guards on one thread,
//! further guards restore the scope they found when they drop (the classic
//! last-in-first-out rule).
//!
//! # Exactness
//! A thread applies its batch when the batch's net live bytes leave
//! `[-BATCH_BYTES, BATCH_BYTES]`, after `BATCH_OPS` operations, when it enters
//! or leaves a scope (leaving a scope for its parent, or entering a child
//! with charges that net to zero bytes, applies it to the scope left only, or
//! to nothing yet: see "Deferred batches"), when it reads statistics, and
//! when it exits. Hence:
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
//!   moment and a hard limit is never overshot;
//! - an allocation is charged only once the inner allocator returned memory: a
//!   refused allocation leaves no trace (with a budget, its bytes are reserved
//!   first and taken back, never counted in a peak).
//!
//! # Deferred batches
//! Leaving a scope for its parent (its guard the newest on the thread)
//! applies the operations the thread made in the scope to the scope's own
//! record, so its figures are exact once it is left, and keeps them in the
//! batch, which becomes the parent's: the parent's chain gets them with the
//! parent's own, when that batch is applied. When that guard held the
//! scope's last reference and nothing else reaches the scope (no other
//! handle, no block it owns, the operations netting no allocation), the
//! scope closes with the exit: its figures are read as the record's plus
//! these operations, and its slot retires without the record being
//! written (`Left::Kept`). Entering a scope (without a
//! budget) while the batch holds operations whose net live bytes are 0, all
//! of them the current scope's own, keeps them too: the batch goes on for
//! both, and the entered scope's part is told from the parent's by what the
//! batch held at entry (`outer_base`). So a request scope opened and closed
//! in a loop touches its own record and not its ancestors' (they get the
//! loop's operations once per batch). The bounds above hold as stated: the
//! batch is one batch (its operations and its net live bytes are bounded as
//! before), the parent's live bytes and peak are those of the sequence of
//! operations in order (the peak counts from the batch's start across both
//! parts), and a scope is exact once the thread left it. A closed scope
//! recycled while its operations are still in another thread's batch
//! moves its live figures out of its ancestors before they arrive there;
//! the totals come out the same, and the ancestors' peaks may miss up to
//! that batch, as for any batch of another thread.
//!
//! # Plain scopes
//! A request scope opened and closed in a loop (a short name, no budget in
//! its chain, the thread batched with room on its stack, the slot its last
//! scope kept, nothing else reaching it at its close) opens and closes in
//! one straight path each, without a call: [`plain_entry`] and
//! [`plain_enter`] for the thread's part of the open (`handle.rs`,
//! `open_plain`), [`exit_alone`] for its part of the close (`handle.rs`,
//! `close_plain`). Every condition is read before anything is written;
//! any other case takes the general paths ([`enter`], [`exit`]), which
//! remain the definition: the straight ones do exactly what those do for
//! their case.
//!
//! # Thread exit
//! The state is a `const`, `Drop`-free thread-local, usable at any point of a
//! thread's life. On Unix a thread's first charge (before anything is batched)
//! attaches a value to a process-wide `pthread` key whose destructor applies
//! the batch when the thread exits, after the other thread-locals' destructors
//! ran; `pthread_setspecific` neither allocates nor registers a destructor, so
//! nothing is registered from inside the allocator path. Every thread's
//! charges reach the totals, however early it exits. A thread that cannot get
//! the key (or on other platforms, until it enters a scope) charges unbatched.
//! After the destructor ran, the thread's remaining charges go unbatched to
//! [`ScopeId::UNATTRIBUTED`], and frees to their owner, so nothing is lost.

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use super::counters::{Batch, Delta};
use super::id::ScopeId;
use super::record::Record;
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
/// Guards one thread can hold at once with any-order drop semantics (see the
/// module docs); deeper nesting falls back to last-in-first-out.
pub const STACK_MAX: usize = 64;

const NORMAL: u8 = 0;
/// Inside our own bookkeeping (attaching the exit hook): charge unbatched.
const REENTRANT: u8 = 1;
/// The exit hook ran: charge unbatched to UNATTRIBUTED.
const TORN_DOWN: u8 = 2;
/// Inside [`untracked`]: new blocks are charged nowhere.
const SUSPENDED: u8 = 3;

/// Exit hook states.
const HOOK_NONE: u8 = 0;
const HOOK_SET: u8 = 1;
/// No hook can be attached: this thread charges unbatched.
const HOOK_UNAVAILABLE: u8 = 2;

/// Set once a host allocation went through a tracking allocator (see
/// [`host_allocator_seen`]).
static HOST_SEEN: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy)]
struct Entry {
    seq: u64,
    id: ScopeId,
    direct: bool,
    /// `id.to_compact()`, computed once at entry.
    compact: u32,
}

impl Entry {
    const EMPTY: Entry = Entry {
        seq: 0,
        id: ScopeId::ROOT,
        direct: false,
        compact: ScopeId::ROOT.to_compact(),
    };
}

struct Stack {
    len: usize,
    next_seq: u64,
    /// Guards entered beyond `STACK_MAX` and still held.
    overflow: u32,
    entries: [Entry; STACK_MAX],
}

/// The fast-path word's value while the thread does not charge batched
/// (see `ThreadState::fast_id`). No stored owner equals it: compact ids are
/// at most 2^30, and at most 2^31 + 2^30 with the sampled bit
/// ([`COMPACT_SAMPLED`](crate::COMPACT_SAMPLED)).
#[doc(hidden)]
pub const NOT_FAST: u32 = u32::MAX;

/// `repr(C)`: the fields the allocator path reads (the fast-path word, then the
/// batch) come first, on one cache line.
#[repr(C)]
pub(crate) struct ThreadState {
    /// The fast-path word: the current scope's compact id
    /// ([`ScopeId::to_compact`]) while `mode == NORMAL && !direct && hook ==
    /// HOOK_SET` (charges go to the batch), [`NOT_FAST`] otherwise. The one
    /// word an allocation tests, and a free compares with the block's owner.
    fast_id: Cell<u32>,
    /// The heap profiler's byte countdown (alloc-host's `profile`), next to
    /// the fast-path word so that the allocation path reaches it from the
    /// thread-state address it already has: decremented by the request size
    /// on every allocation ([`host_sample_due`]); below zero, the profiler's
    /// cold path decides (a sample, or a fresh interval). Starts at 0, so a
    /// thread's first allocation takes that path.
    sample_left: Cell<i64>,
    batch: UnsafeCell<Batch>,
    pub(crate) current: Cell<ScopeId>,
    /// The current chain has a budget: charge unbatched.
    pub(crate) direct: Cell<bool>,
    mode: Cell<u8>,
    hook: Cell<u8>,
    /// Device charges, batched the same way.
    device_batch: UnsafeCell<Batch>,
    stack: UnsafeCell<Stack>,
    /// The scope the thread came from when it entered its current scope with
    /// that scope's charges still in its batch ("Deferred batches" in the
    /// module docs); [`ScopeId::UNTRACKED`] when none.
    outer: Cell<ScopeId>,
    /// The batch as it was at that entry (its net live bytes 0).
    outer_base: UnsafeCell<Batch>,
    /// Net allocations in the batch that were made in scopes the thread
    /// has left since the batch began: their life words count them already.
    left_net: Cell<i64>,
    /// The slot this thread kept from the last scope it closed alone, for
    /// its next one (`Registry::claim_kept`), plus 1; 0 when none. A note,
    /// not a claim: another thread may have taken the slot since.
    kept_slot: Cell<u32>,
    /// `mode == NORMAL && hook == HOOK_SET`, kept by `refresh` (every change
    /// of either is followed by one): the fast-path word of a scope entered
    /// or returned to is its compact id exactly when this holds and its
    /// chain has no budget.
    batchable: Cell<bool>,
}

impl ThreadState {
    const fn new() -> Self {
        ThreadState {
            fast_id: Cell::new(NOT_FAST),
            sample_left: Cell::new(0),
            batch: UnsafeCell::new(Batch::EMPTY),
            current: Cell::new(ScopeId::ROOT),
            direct: Cell::new(false),
            mode: Cell::new(NORMAL),
            hook: Cell::new(HOOK_NONE),
            device_batch: UnsafeCell::new(Batch::EMPTY),
            stack: UnsafeCell::new(Stack {
                len: 0,
                next_seq: 0,
                overflow: 0,
                entries: [Entry::EMPTY; STACK_MAX],
            }),
            outer: Cell::new(ScopeId::UNTRACKED),
            outer_base: UnsafeCell::new(Batch::EMPTY),
            left_net: Cell::new(0),
            kept_slot: Cell::new(0),
            batchable: Cell::new(false),
        }
    }

    #[inline]
    fn batched(&self) -> bool {
        self.fast_id.get() != NOT_FAST
    }

    #[inline]
    fn refresh(&self) {
        let batchable = self.mode.get() == NORMAL && self.hook.get() == HOOK_SET;
        self.batchable.set(batchable);
        let fast = batchable && !self.direct.get();
        self.fast_id.set(if fast {
            self.current.get().to_compact()
        } else {
            NOT_FAST
        });
    }

    fn set_mode(&self, mode: u8) {
        self.mode.set(mode);
        self.refresh();
    }

    #[inline]
    fn set_current(&self, id: ScopeId, direct: bool) {
        self.current.set(id);
        self.direct.set(direct);
        self.refresh();
    }

    /// [`ThreadState::set_current`] of a stack entry, whose compact id is
    /// computed already.
    #[inline(always)]
    fn set_current_entry(&self, e: &Entry) {
        self.current.set(e.id);
        self.direct.set(e.direct);
        let fast = self.batchable.get() && !e.direct;
        self.fast_id.set(if fast { e.compact } else { NOT_FAST });
    }

    /// Runs `f` on this thread's batch.
    #[inline(always)]
    fn with_batch<R>(&self, f: impl FnOnce(&mut Batch) -> R) -> R {
        // SAFETY: the batch is thread-local and `f` (Batch's arithmetic) neither
        // allocates nor re-enters this module, so no other reference to it exists
        // while `f` runs.
        f(unsafe { &mut *self.batch.get() })
    }

    /// Runs `f` on this thread's device batch.
    #[inline]
    fn with_device_batch<R>(&self, f: impl FnOnce(&mut Batch) -> R) -> R {
        // SAFETY: as `with_batch`: thread-local, and `f` does not re-enter.
        f(unsafe { &mut *self.device_batch.get() })
    }

    /// Runs `f` on this thread's guard stack.
    fn with_stack<R>(&self, f: impl FnOnce(&mut Stack) -> R) -> R {
        // SAFETY: thread-local; `f` (the push/remove below) neither allocates
        // nor re-enters this module.
        f(unsafe { &mut *self.stack.get() })
    }

    /// Attaches the exit hook if this thread has none yet. Called on the
    /// thread's first charge and on scope entry.
    #[cold]
    fn attach_hook(&self) {
        if self.hook.get() != HOOK_NONE || self.mode.get() != NORMAL {
            return;
        }
        self.set_mode(REENTRANT);
        self.hook.set(exit_hook::attach());
        self.set_mode(NORMAL);
    }
}

thread_local! {
    static STATE: ThreadState = const { ThreadState::new() };
}

/// The calling thread's state, for the allocator paths: `LocalKey::with`
/// with a closure that does the work is not always inlined (measured: a call
/// and the closure's captures spilled to the stack on every allocation); the
/// address alone always is.
#[inline(always)]
fn this_thread() -> &'static ThreadState {
    // SAFETY: `STATE` is a `const`-initialised thread-local without `Drop`
    // (no lazy initialisation, no destructor registered), so its storage is
    // part of the thread's static TLS block: valid, never moved, and never
    // dropped from the thread's start until the thread itself is gone, after
    // every thread-local destructor ran. The reference cannot leave the
    // thread: `ThreadState` holds `Cell`s, so it is not `Sync` and
    // `&ThreadState` is not `Send`; callers in this module use it only for
    // the duration of one call on the calling thread, where every access
    // goes through `Cell` or the `with_*` helpers (no `&mut` is held across
    // another access). The `'static` is never observed past the thread's
    // life: no code runs on a thread after it is gone.
    unsafe { &*STATE.with(|s| s as *const ThreadState) }
}

/// Runs `f` on the calling thread's state ([`this_thread`]; always inlined,
/// unlike `LocalKey::with` with a working closure).
#[inline(always)]
fn with_state<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    f(this_thread())
}

/// Runs at thread exit: applies the batches, then charges the rest unbatched.
fn on_thread_exit() {
    let _ = STATE.try_with(|s| {
        flush_state(s);
        s.set_mode(TORN_DOWN);
        s.set_current(ScopeId::UNATTRIBUTED, false);
        // The slot kept for a next scope that will not come goes back to
        // the free list (unless a full registry took it already).
        if let Some(slot) = s.kept_slot.replace(0).checked_sub(1) {
            if REGISTRY.claim_kept(slot).is_some() {
                REGISTRY.put_slot(slot);
            }
        }
    });
}

#[cfg(unix)]
mod exit_hook {
    //! A process-wide pthread key whose destructor flushes the exiting
    //! thread's batch. `pthread_key_create` runs once; a thread attaches with
    //! `pthread_setspecific`, which stores into the thread's own key table
    //! (no allocation for the first keys on glibc and macOS; an allocation it
    //! might make for a high key index is charged unbatched, as REENTRANT).
    use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering::*};

    static STATE: AtomicU8 = AtomicU8::new(0); // 0 none, 1 creating, 2 ready, 3 failed
    static KEY: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn destructor(_: *mut libc::c_void) {
        super::on_thread_exit();
    }

    /// The key; `Err(true)` when another thread is creating it (try later),
    /// `Err(false)` when none can be had.
    fn key() -> Result<libc::pthread_key_t, bool> {
        loop {
            match STATE.load(Acquire) {
                2 => return Ok(KEY.load(Relaxed) as libc::pthread_key_t),
                3 => return Err(false),
                1 => return Err(true),
                _ => {}
            }
            if STATE.compare_exchange(0, 1, AcqRel, Acquire).is_err() {
                continue;
            }
            let mut k: libc::pthread_key_t = 0;
            // SAFETY: `k` is a valid out-pointer; `destructor` is a plain
            // `extern "C"` function that lives for the whole process.
            let rc = unsafe { libc::pthread_key_create(&mut k, Some(destructor)) };
            if rc == 0 {
                KEY.store(k as usize, Relaxed);
                STATE.store(2, Release);
                return Ok(k);
            }
            STATE.store(3, Release);
            return Err(false);
        }
    }

    /// Attaches the calling thread; returns its new hook state.
    pub(super) fn attach() -> u8 {
        let k = match key() {
            Ok(k) => k,
            Err(true) => return super::HOOK_NONE,
            Err(false) => return super::HOOK_UNAVAILABLE,
        };
        let marker = core::ptr::NonNull::<u8>::dangling().as_ptr().cast();
        // SAFETY: `k` is a key created above; the value is a non-null marker
        // that is never dereferenced (the destructor ignores it).
        if unsafe { libc::pthread_setspecific(k, marker) } == 0 {
            super::HOOK_SET
        } else {
            super::HOOK_UNAVAILABLE
        }
    }
}

#[cfg(not(unix))]
mod exit_hook {
    //! Elsewhere a thread-local with a destructor, attached only from scope
    //! entry (never from the allocator path): until then the thread charges
    //! unbatched.
    struct Hook;
    impl Drop for Hook {
        fn drop(&mut self) {
            super::on_thread_exit();
        }
    }
    thread_local! {
        static HOOK: Hook = const { Hook };
    }
    pub(super) fn attach() -> u8 {
        if super::ENTERING.with(|e| e.get()) && HOOK.try_with(|_| ()).is_ok() {
            super::HOOK_SET
        } else {
            super::HOOK_NONE
        }
    }
}

#[cfg(not(unix))]
thread_local! {
    static ENTERING: Cell<bool> = const { Cell::new(false) };
}

/// Applies this thread's batch to the shared counters.
pub(crate) fn flush_state(s: &ThreadState) {
    if !s.with_batch(|b| b.is_empty()) || !s.with_device_batch(|b| b.is_empty()) {
        flush_nonempty(s);
    }
}

/// Applies this thread's non-empty batches (out of line: the allocator path
/// calls it once per batch).
#[cold]
#[inline(never)]
fn flush_nonempty(s: &ThreadState) {
    let d = s.with_batch(|b| core::mem::replace(b, Batch::EMPTY));
    let left_net = s.left_net.replace(0);
    let outer = s.outer.replace(ScopeId::UNTRACKED);
    let cur = s.current.get().slot();
    if outer.is_tracked() {
        debug_assert_eq!(
            left_net, 0,
            "a batch is deferred only with no scope's allocations in it"
        );
        // SAFETY: thread-local, and nothing else refers to it during the copy.
        let base = unsafe { *s.outer_base.get() };
        apply_deferred(cur, outer.slot(), &d, &base);
    } else if !d.is_empty() {
        mark_seen();
        let all = d.to_delta();
        REGISTRY.apply_chain(cur, &all, false);
        REGISTRY.adjust_life(cur, all.net_allocations().wrapping_sub(left_net));
    }
    let d = s.with_device_batch(|b| core::mem::replace(b, Batch::EMPTY));
    if !d.is_empty() {
        REGISTRY.apply_batch(s.current.get().slot(), &d.to_delta(), true);
    }
}

/// The operations batch `d` holds beyond `base` (those made since the thread
/// entered its current scope with `base` in its batch; `d.max_prefix` counts
/// from that entry, where the live bytes were 0).
#[inline]
fn part_since(d: &Batch, base: &Batch) -> Delta {
    let allocations = d.allocations.wrapping_sub(base.allocations);
    let reallocs = d.reallocs.wrapping_sub(base.reallocs);
    let ops = base.left.wrapping_sub(d.left);
    let bytes_allocated = d.bytes_allocated.wrapping_sub(base.bytes_allocated);
    let live = d.live.wrapping_sub(base.live);
    Delta {
        allocations: u64::from(allocations),
        frees: u64::from(ops.wrapping_sub(allocations).wrapping_sub(reallocs)),
        reallocs: u64::from(reallocs),
        bytes_allocated,
        bytes_freed: bytes_allocated.wrapping_sub(live as u64),
        live,
        max_prefix: d.max_prefix.wrapping_sub(base.live),
        left: d.left,
    }
}

/// Applies a batch `d` begun in `outer`, whose operations since `base` were
/// made in `cur` (the thread entered `cur` from `outer` with `base` in its
/// batch), in the order they were made: `outer`'s part to `outer`'s chain,
/// then `cur`'s to `cur`'s chain. When `outer` is `cur`'s parent, `cur`'s
/// chain is `cur` and then `outer`'s: `cur` gets its part, and `outer`'s
/// chain the whole batch at once (its peak from the highest live bytes of
/// either part). Every allocation in `base` is `outer`'s (a batch is
/// deferred only while no scope left since it began kept one).
#[cold]
#[inline(never)]
fn apply_deferred(cur: u32, outer: u32, d: &Batch, base: &Batch) {
    mark_seen();
    let part = part_since(d, base);
    let outer_part = base.to_delta();
    let outer_net = outer_part.net_allocations();
    if REGISTRY.parent(cur) == Some(outer) {
        if d.left != base.left {
            REGISTRY.apply_one(cur, &part, part.net_allocations());
        }
        let mut all = d.to_delta();
        all.max_prefix = all.max_prefix.max(base.max_prefix);
        REGISTRY.apply_chain(outer, &all, false);
        REGISTRY.adjust_life(outer, outer_net);
    } else {
        REGISTRY.apply_chain(outer, &outer_part, false);
        REGISTRY.adjust_life(outer, outer_net);
        if d.left != base.left {
            REGISTRY.apply_batch(cur, &part, false);
        }
    }
}

#[inline]
fn mark_seen() {
    if !HOST_SEEN.load(Relaxed) {
        HOST_SEEN.store(true, Relaxed);
    }
}

/// Whether any host allocation has gone through a tracking allocator in this
/// process (alloc-host's `is_installed` probes with this; it never touches the
/// tracking switch).
pub fn host_allocator_seen() -> bool {
    flush_state(this_thread());
    HOST_SEEN.load(Relaxed)
}

/// Records that a tracking allocator handled an allocation without charging it
/// (tracking switched off).
#[doc(hidden)]
#[inline]
pub fn mark_host_allocator_seen() {
    mark_seen();
}

/// Applies the calling thread's pending host charges now, so that statistics
/// read from any thread include them.
pub fn flush() {
    flush_state(this_thread());
}

/// Runs `f` with the calling thread's new allocations charged nowhere (frees of
/// tracked blocks are still charged back to their owners). The registry uses it
/// for its own bookkeeping (scope names, reports), so that opening a scope or
/// printing a report does not show up in the figures it reports.
pub fn untracked<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            this_thread().set_mode(self.0);
        }
    }
    let prev = with_state(|s| {
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
    this_thread().current.get()
}

/// One host allocation or reallocation between its begin (charge decided,
/// budget reserved) and its finish (the inner allocator answered).
#[derive(Clone, Copy, Debug)]
pub struct HostCharge {
    owner: ScopeId,
    /// The slot charged: the owner's, or `retired` for a recycled owner.
    slot: u32,
    /// Live bytes reserved along the chain (a budget).
    reserved: i64,
    flags: u8,
}

const BATCHED: u8 = 1;
const PINNED: u8 = 2;

impl HostCharge {
    const UNTRACKED: HostCharge = HostCharge {
        owner: ScopeId::UNTRACKED,
        slot: 0,
        reserved: 0,
        flags: 0,
    };

    /// The scope to record as the block's owner.
    #[inline]
    pub fn owner(&self) -> ScopeId {
        self.owner
    }
}

/// Decides who pays for a new host block of `bytes` and reserves it under a
/// budget. `None`: a hard limit refuses it (nothing changed; return null).
/// Otherwise call [`finish_host_alloc`] once the inner allocator answered.
///
/// Allocator path: no allocation, lock or panic.
///
/// # Safety
/// Only a global allocator may call this, once per allocation, followed by
/// exactly one [`finish_host_alloc`] on the same thread with the same `bytes`;
/// the block's later free must be charged with [`charge_host_free`] and the
/// owner returned here. Unmatched calls corrupt every ancestor's figures.
#[doc(hidden)]
#[inline]
pub unsafe fn begin_host_alloc(bytes: usize) -> Option<HostCharge> {
    with_state(|s| {
        if s.batched() {
            return Some(HostCharge {
                owner: s.current.get(),
                slot: 0,
                reserved: 0,
                flags: BATCHED,
            });
        }
        begin_alloc_slow(s, bytes)
    })
}

#[cold]
#[inline(never)]
fn begin_alloc_slow(s: &ThreadState, bytes: usize) -> Option<HostCharge> {
    mark_seen();
    if s.mode.get() == SUSPENDED {
        return Some(HostCharge::UNTRACKED);
    }
    s.attach_hook();
    let owner = s.current.get();
    if s.batched() {
        return Some(HostCharge {
            owner,
            slot: 0,
            reserved: 0,
            flags: BATCHED,
        });
    }
    let slot = owner.slot();
    let mut reserved = 0;
    if REGISTRY.budget_in_chain(slot) && bytes > 0 {
        let b = i64::try_from(bytes).ok()?;
        if !REGISTRY.reserve_chain(slot, b) {
            return None;
        }
        reserved = b;
    }
    Some(HostCharge {
        owner,
        slot,
        reserved,
        flags: 0,
    })
}

/// Completes [`begin_host_alloc`]: `ok` is whether the inner allocator
/// returned memory. A failed allocation leaves no trace.
///
/// # Safety
/// As [`begin_host_alloc`]: `c` and `bytes` from that call, on this thread.
#[doc(hidden)]
#[inline]
pub unsafe fn finish_host_alloc(c: HostCharge, bytes: usize, ok: bool) {
    if c.flags & BATCHED != 0 {
        if ok {
            with_state(|s| {
                if s.with_batch(|b| b.alloc(bytes as u64, BATCH_BYTES)) {
                    flush_state(s);
                }
            });
        }
        return;
    }
    if c.owner.is_tracked() {
        finish_slow(c, bytes as u64, None, ok);
    }
}

/// The unbatched completion of an allocation (`old = None`) or reallocation.
#[cold]
#[inline(never)]
fn finish_slow(c: HostCharge, new: u64, old: Option<u64>, ok: bool) {
    if !ok {
        if c.reserved != 0 {
            REGISTRY.unreserve_chain(c.slot, c.reserved);
        }
    } else {
        let mut d = Delta::EMPTY;
        match old {
            None => d.alloc(new),
            Some(old) => d.realloc(old, new),
        }
        if c.reserved != 0 {
            // The reservation covered the growth; a shrink needs none.
            REGISTRY.commit_reserved(c.slot, &d);
        } else {
            REGISTRY.apply_batch(c.slot, &d, false);
        }
    }
    if c.flags & PINNED != 0 {
        REGISTRY.unpin(c.slot);
    }
}

/// Charges the free of a host block of `bytes` back to `owner`, the scope that
/// allocated it, whichever thread or scope frees it (a recycled owner's free
/// goes to `retired`).
///
/// Allocator path: no allocation, lock or panic.
///
/// # Safety
/// Only a global allocator may call this, once per block it allocated, with
/// the owner and size it charged.
#[doc(hidden)]
#[inline]
pub unsafe fn charge_host_free(owner: ScopeId, bytes: usize) {
    if !owner.is_tracked() {
        return;
    }
    with_state(|s| {
        if s.batched() && owner == s.current.get() {
            free_in_batch(s, bytes);
        } else {
            free_remote(s, owner, bytes as u64);
        }
    })
}

/// [`charge_host_free`] for an owner kept as a compact id
/// ([`ScopeId::to_compact`]): a free in the owner's own scope is matched on
/// the id alone, without reading the registry.
///
/// # Safety
/// As [`charge_host_free`], with the compact id stored for the block.
#[doc(hidden)]
#[inline(always)]
pub unsafe fn charge_host_free_compact(id: u32, bytes: usize) {
    let s = this_thread();
    if id == s.fast_id.get() {
        free_in_batch(s, bytes);
    } else if id != 0 {
        free_compact_slow(s, id, bytes as u64);
    }
}

/// A free of a tracked block (`id != 0`) whose owner is not the thread's
/// current scope, or on a thread that does not batch: charged to the owner
/// directly.
#[cold]
#[inline(never)]
fn free_compact_slow(s: &ThreadState, id: u32, bytes: u64) {
    // A stored owner with the sampled bit (`COMPACT_SAMPLED`) never equals
    // the fast-path word; alloc-host's `dealloc` sends such a block to its
    // cold `dealloc_sampled` (which removes the sample and calls back here
    // with the bit cleared) before it gets here. Cleared again so that the
    // owner looked up is never a flagged value.
    let id = id & !crate::COMPACT_SAMPLED;
    free_remote(s, REGISTRY.owner_of_compact(id), bytes);
}

/// Charges a new host block of `bytes` whose owner the caller keeps as a
/// compact id: `alloc(owner)` gets the block from the inner allocator and
/// stores `owner` with it, returning the block and whether the owner was kept
/// (`false` for a null block, or one whose owner has nowhere to go: it is
/// charged nothing and stays untracked). Returns the block (null: refused by
/// a hard limit, or the inner allocator failed; nothing charged).
///
/// The fast path is one thread-local word ([`NOT_FAST`] or the current
/// scope's compact id), the call, and the batch update; everything else
/// (budgets, the first charge of a thread, `untracked`, thread exit) is out
/// of line. `alloc` is called exactly once, or not at all when a hard limit
/// refuses the bytes.
///
/// # Safety
/// Only a global allocator may call this, once per allocation; a block it
/// keeps must later be freed through [`charge_host_free_compact`] with the
/// owner stored and the same `bytes`.
#[doc(hidden)]
#[inline(always)]
pub unsafe fn track_host_alloc(
    bytes: usize,
    alloc: impl FnOnce(u32) -> (*mut u8, bool),
) -> *mut u8 {
    let s = this_thread();
    let id = s.fast_id.get();
    if id == NOT_FAST {
        return track_alloc_slow(s, bytes, alloc);
    }
    let (p, kept) = alloc(id);
    if kept && s.with_batch(|b| b.alloc(bytes as u64, BATCH_BYTES)) {
        flush_nonempty(s);
    }
    p
}

/// The calling thread's fast-path word: the current scope's compact id when
/// this thread charges batched, [`NOT_FAST`] otherwise. A global allocator
/// that reads an id here may allocate, keep the id with the block, and
/// then call [`host_fast_charge`] (the split form of [`track_host_alloc`],
/// so that no closure crosses the branch); on [`NOT_FAST`] it calls
/// [`track_host_alloc`].
#[doc(hidden)]
#[inline(always)]
pub fn host_fast_id() -> u32 {
    this_thread().fast_id.get()
}

/// Charges a block of `bytes` to the batch of the calling thread's current
/// scope, after [`host_fast_id`] returned that scope's id and the block was
/// kept with it.
///
/// # Safety
/// As [`track_host_alloc`]: only a global allocator, once per block kept
/// with the id [`host_fast_id`] returned on this thread during this
/// allocation (not [`NOT_FAST`]).
#[doc(hidden)]
#[inline(always)]
pub unsafe fn host_fast_charge(bytes: usize) {
    let s = this_thread();
    if s.with_batch(|b| b.alloc(bytes as u64, BATCH_BYTES)) {
        flush_nonempty(s);
    }
}

/// [`host_fast_charge`] without its flush: records the block in the batch
/// and says whether the batch is now due; the caller then calls
/// [`host_flush`] (out of line, so that a global allocator can make it a
/// tail call that keeps nothing live across it).
///
/// # Safety
/// As [`host_fast_charge`].
#[doc(hidden)]
#[inline(always)]
pub unsafe fn host_fast_charge_due(bytes: usize) -> bool {
    this_thread().with_batch(|b| b.alloc(bytes as u64, BATCH_BYTES))
}

/// A free of a block whose stored owner equals [`host_fast_id`] (so the
/// thread batches, and the owner is its current scope): into the batch;
/// true when the batch is now due (then call [`host_flush`]).
///
/// # Safety
/// Only a global allocator, once per free of a block kept with the id
/// [`host_fast_id`] returns on this thread now, with the size it charged.
#[doc(hidden)]
#[inline(always)]
pub unsafe fn host_fast_free_due(bytes: usize) -> bool {
    this_thread().with_batch(|b| b.free(bytes as u64, BATCH_BYTES))
}

/// Applies the calling thread's batches, after [`host_fast_charge_due`]
/// or [`host_fast_free_due`] said they are due.
#[doc(hidden)]
#[cold]
#[inline(never)]
pub fn host_flush() {
    flush_nonempty(this_thread());
}

/// [`host_fast_realloc_charge`] without its flush: records the
/// reallocation in the batch and says whether the batch is now due (then
/// call [`host_flush`], as a tail call).
///
/// # Safety
/// As [`host_fast_realloc_charge`].
#[doc(hidden)]
#[inline(always)]
pub unsafe fn host_fast_realloc_due(old: usize, new: usize) -> bool {
    this_thread().with_batch(|b| b.realloc(old as u64, new as u64, BATCH_BYTES))
}

/// Charges a reallocation from `old` to `new` bytes of a block whose stored
/// owner equals [`host_fast_id`] (so the thread batches, and the owner is its
/// current scope) to the batch.
///
/// # Safety
/// Only a global allocator, once per successful reallocation of a block kept
/// with the id [`host_fast_id`] returns on this thread now.
#[doc(hidden)]
#[inline(always)]
pub unsafe fn host_fast_realloc_charge(old: usize, new: usize) {
    let s = this_thread();
    if s.with_batch(|b| b.realloc(old as u64, new as u64, BATCH_BYTES)) {
        flush_nonempty(s);
    }
}

/// The heap profiler's countdown step: subtracts `bytes` from the calling
/// thread's byte countdown and says whether it went below zero (then the
/// profiler decides, and sets a new countdown with [`set_host_sample_left`]).
/// One load, a subtraction, a store and the sign on the thread state the
/// allocation path already addresses.
#[doc(hidden)]
#[inline(always)]
pub fn host_sample_due(bytes: usize) -> bool {
    let c = &this_thread().sample_left;
    let left = c.get().wrapping_sub(bytes as i64);
    c.set(left);
    left < 0
}

/// Sets the calling thread's heap-profiler byte countdown (see
/// [`host_sample_due`]).
#[doc(hidden)]
#[inline]
pub fn set_host_sample_left(bytes: i64) {
    this_thread().sample_left.set(bytes);
}

/// [`track_host_alloc`] on a thread that does not charge batched.
#[cold]
#[inline(never)]
fn track_alloc_slow(
    s: &ThreadState,
    bytes: usize,
    alloc: impl FnOnce(u32) -> (*mut u8, bool),
) -> *mut u8 {
    let Some(c) = begin_alloc_slow(s, bytes) else {
        return core::ptr::null_mut();
    };
    let (p, kept) = alloc(c.owner.to_compact());
    if c.flags & BATCHED != 0 {
        if kept && s.with_batch(|b| b.alloc(bytes as u64, BATCH_BYTES)) {
            flush_nonempty(s);
        }
    } else if c.owner.is_tracked() {
        finish_slow(c, bytes as u64, None, kept);
    }
    p
}

/// A free in the thread's current scope: into the batch, flushed when the
/// batch is used up or holds more than [`BATCH_BYTES`] of frees.
#[inline(always)]
fn free_in_batch(s: &ThreadState, bytes: usize) {
    if s.with_batch(|b| b.free(bytes as u64, BATCH_BYTES)) {
        flush_nonempty(s);
    }
}

#[cold]
#[inline(never)]
fn free_remote(s: &ThreadState, owner: ScopeId, bytes: u64) {
    // Apply this thread's earlier charges first, so that the shared counters
    // see this thread's operations in program order.
    if s.mode.get() == NORMAL {
        flush_state(s);
    }
    let mut d = Delta::EMPTY;
    d.free(bytes);
    REGISTRY.charge_owner(owner, &d, false);
}

/// Decides the charge of a reallocation from `old` to `new` bytes of a block
/// `owner` keeps, reserving growth under a budget. `None`: a hard limit
/// refuses the growth (nothing changed). Otherwise call
/// [`finish_host_realloc`] once the inner allocator answered.
///
/// # Safety
/// As [`begin_host_alloc`], for a live block charged to `owner`.
#[doc(hidden)]
#[inline]
pub unsafe fn begin_host_realloc(owner: ScopeId, old: usize, new: usize) -> Option<HostCharge> {
    if !owner.is_tracked() {
        return Some(HostCharge::UNTRACKED);
    }
    with_state(|s| {
        if s.batched() && owner == s.current.get() {
            return Some(HostCharge {
                owner,
                slot: 0,
                reserved: 0,
                flags: BATCHED,
            });
        }
        begin_realloc_slow(s, owner, old, new)
    })
}

#[cold]
#[inline(never)]
fn begin_realloc_slow(
    s: &ThreadState,
    owner: ScopeId,
    old: usize,
    new: usize,
) -> Option<HostCharge> {
    if s.mode.get() == NORMAL {
        flush_state(s);
    }
    let slot = REGISTRY.pin(owner.slot(), owner.generation());
    let mut reserved = 0;
    if new > old && REGISTRY.budget_in_chain(slot) {
        let Ok(b) = i64::try_from(new - old) else {
            REGISTRY.unpin(slot);
            return None;
        };
        if !REGISTRY.reserve_chain(slot, b) {
            REGISTRY.unpin(slot);
            return None;
        }
        reserved = b;
    }
    Some(HostCharge {
        owner,
        slot,
        reserved,
        flags: PINNED,
    })
}

/// Completes [`begin_host_realloc`]; `ok` is whether the inner allocator
/// returned memory (a failed reallocation leaves no trace).
///
/// # Safety
/// As [`begin_host_realloc`]: `c`, `old` and `new` from that call.
#[doc(hidden)]
#[inline]
pub unsafe fn finish_host_realloc(c: HostCharge, old: usize, new: usize, ok: bool) {
    if c.flags & BATCHED != 0 {
        if ok {
            with_state(|s| {
                if s.with_batch(|b| b.realloc(old as u64, new as u64, BATCH_BYTES)) {
                    flush_state(s);
                }
            });
        }
        return;
    }
    if c.owner.is_tracked() {
        finish_slow(c, new as u64, Some(old as u64), ok);
    }
}

/// Charges `bytes` of device memory to the calling thread's scope chain and
/// returns the owner; the device allocator keeps it with the buffer and passes it
/// to [`charge_device_free`]. Batched per thread like host charges (same bounds),
/// so a cache hit pays no shared atomic. Called by a device allocator (the
/// engine in `alloc-core`), not by users.
pub fn charge_device_alloc(bytes: u64) -> ScopeId {
    with_state(|s| {
        if !s.batched() {
            s.attach_hook();
        }
        let owner = s.current.get();
        if s.batched() {
            if s.with_device_batch(|b| b.alloc(bytes, DEVICE_BATCH_BYTES)) {
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
    with_state(|s| {
        if s.batched() && owner == s.current.get() {
            if s.with_device_batch(|b| b.free(bytes, DEVICE_BATCH_BYTES)) {
                flush_state(s);
            }
        } else {
            if s.mode.get() == NORMAL {
                flush_state(s);
            }
            let mut d = Delta::EMPTY;
            d.free(bytes);
            REGISTRY.charge_owner(owner, &d, true);
        }
    })
}

/// What [`enter`] did, for [`exit`] to undo.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EnterToken {
    /// Stack entry; 0 when the stack was full (restore `prev` instead).
    seq: u64,
    prev: ScopeId,
    prev_direct: bool,
}

/// Makes `id` the calling thread's scope (pushing it on the guard stack),
/// flushing the batch of the previous one.
#[inline(always)]
pub(crate) fn enter(id: ScopeId, direct: bool) -> EnterToken {
    // No closure: its body is the caller's, in one frame (a closure passed
    // to `with_state` was measured out of line, a call and a frame per
    // scope).
    let s = this_thread();
    {
        #[cfg(not(unix))]
        ENTERING.with(|e| e.set(true));
        if s.hook.get() == HOOK_NONE {
            s.attach_hook();
        }
        #[cfg(not(unix))]
        ENTERING.with(|e| e.set(false));
        if !defer_batch(s, direct) {
            flush_state(s);
        }
        let prev = s.current.get();
        let prev_direct = s.direct.get();
        if s.mode.get() == TORN_DOWN {
            return EnterToken {
                seq: 0,
                prev,
                prev_direct,
            };
        }
        let e = Entry {
            seq: 0,
            id,
            direct,
            compact: id.to_compact(),
        };
        let seq = s.with_stack(|st| {
            if st.len < STACK_MAX && st.overflow == 0 {
                st.next_seq += 1;
                st.entries[st.len] = Entry {
                    seq: st.next_seq,
                    ..e
                };
                st.len += 1;
                st.next_seq
            } else {
                st.overflow += 1;
                0
            }
        });
        s.set_current_entry(&e);
        EnterToken {
            seq,
            prev,
            prev_direct,
        }
    }
}

/// What [`plain_entry`] found: the thread may enter a plain scope in one
/// straight path ([`plain_enter`]).
pub(crate) struct PlainEntry {
    s: &'static ThreadState,
    /// The scope the thread is in: the new scope's parent.
    pub parent: ScopeId,
    /// The slot the thread kept for its next scope, plus 1 (not 0).
    pub kept: u32,
    /// The batch holds the parent's operations, netting 0 live bytes, to
    /// be kept for both ([`defer_batch`]).
    defer: bool,
}

/// Whether the calling thread can enter a new scope without a budget in
/// one straight path without a call, read before anything is written:
/// its exit hook is set and it charges batched (mode normal, the current
/// chain without a budget), its stack has room (none past it), no device
/// charge is pending, its batch is empty or can be kept for both scopes
/// ([`defer_batch`]: no application needed), and it kept a slot from its
/// last scope. `None` otherwise (the caller takes the general path).
#[inline(always)]
pub(crate) fn plain_entry() -> Option<PlainEntry> {
    let s = this_thread();
    // SAFETY: thread-local; read only, and no reference outlives the read.
    let (st, b) = unsafe { (&*s.stack.get(), &*s.batch.get()) };
    let kept = s.kept_slot.get();
    // Batched: the mode is normal and the exit hook set (`batchable`),
    // and the current chain has no budget.
    if kept == 0
        || !s.batched()
        || st.len >= STACK_MAX
        || st.overflow != 0
        || !s.with_device_batch(|d| d.is_empty())
    {
        return None;
    }
    let defer = !b.is_empty();
    if defer && (s.outer.get().is_tracked() || s.left_net.get() != 0 || b.live != 0) {
        return None;
    }
    Some(PlainEntry {
        s,
        parent: s.current.get(),
        kept,
        defer,
    })
}

/// [`enter`] of scope `id` (no budget in its chain, a child of the
/// current scope) as [`plain_entry`] found the thread: keeps the batch
/// for both scopes when it holds the parent's operations, pushes the
/// stack and sets the fast-path word.
#[inline(always)]
pub(crate) fn plain_enter(p: &PlainEntry, id: ScopeId) -> EnterToken {
    let s = p.s;
    if p.defer {
        // `defer_batch`, its conditions read by `plain_entry`.
        // SAFETY: thread-local; no other reference to either exists
        // during these stores.
        unsafe {
            let b = &mut *s.batch.get();
            *s.outer_base.get() = *b;
            b.max_prefix = 0;
        }
        s.outer.set(p.parent);
    }
    // `id` is a registry slot's: tracked.
    let compact = id.to_compact_tracked();
    let seq = s.with_stack(|st| {
        st.next_seq += 1;
        let seq = st.next_seq;
        let n = st.len;
        // SAFETY: `plain_entry` returned only with `n < STACK_MAX`, and
        // between it and here nothing writes this thread's stack (the
        // caller writes registry records only).
        *unsafe { st.entries.get_unchecked_mut(n) } = Entry {
            seq,
            id,
            direct: false,
            compact,
        };
        st.len = n + 1;
        seq
    });
    // `set_current_entry`, with what `plain_entry` read: the thread may
    // batch and the chain has no budget (the fast-path word is set only
    // then, so `direct` is false already), so the word is the compact id.
    s.current.set(id);
    s.fast_id.set(compact);
    EnterToken {
        seq,
        prev: p.parent,
        prev_direct: false,
    }
}

/// On entry into a scope without a budget: keeps the batch of the scope
/// the thread is in instead of applying it, when it holds operations whose
/// net live bytes are 0 and no device charge is pending ("Deferred
/// batches" in the module docs), and no scope left since the batch began
/// kept an allocation. Returns whether it did (else the caller applies the
/// batch).
#[inline]
fn defer_batch(s: &ThreadState, direct: bool) -> bool {
    if s.with_batch(|b| b.is_empty())
        || direct
        || !s.batched()
        || s.outer.get().is_tracked()
        || s.left_net.get() != 0
        || !s.with_device_batch(|b| b.is_empty())
    {
        return false;
    }
    let base = s.with_batch(|b| *b);
    if base.live != 0 {
        return false;
    }
    // SAFETY: thread-local; no other reference to it exists during the store.
    unsafe { *s.outer_base.get() = base };
    s.outer.set(s.current.get());
    // The entered scope's highest live bytes count from here (0).
    s.with_batch(|b| b.max_prefix = 0);
    true
}

/// A closing scope's operations still in its thread's batch, as its
/// figures need them ([`exit`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Part {
    /// Allocations made.
    pub allocations: u64,
    /// Bytes they allocated (reallocations' growth included).
    pub bytes_allocated: u64,
    /// The highest live bytes reached, from 0 at the scope's entry.
    pub max_prefix: i64,
}

/// What [`exit_deferred`] did.
enum Left {
    /// Nothing: the caller applies the batch.
    Flush,
    /// The batch was dealt with (the scope's part applied to its record, or
    /// nothing pending).
    Done,
    /// The scope closes with this exit (`closing`, alone: [`Registry::alone`])
    /// and its part of the batch, which changes no life word, was not
    /// applied to its record: the caller counts it in the figures it reads
    /// from the record when it retires the scope (the part stays in the
    /// batch for the parent's chain, as after [`Left::Done`]).
    ///
    /// [`Registry::alone`]: super::registry::Registry::alone
    Kept(Part),
}

/// On exit from the scope entered with `t` back into its parent (`top`:
/// the guard's entry is the newest on the stack; `below`: the entry under
/// it): applies the operations made in the scope since it was entered to
/// its record alone and keeps them in the batch, now the parent's, with
/// whatever of the parent's the batch held when the scope was entered
/// ("Deferred batches" in the module docs); or, when the scope is
/// `closing` and alone and its part nets no allocation, leaves the part to
/// the caller ([`Left::Kept`]).
#[inline(always)]
fn exit_deferred(s: &ThreadState, top: bool, below: ScopeId, closing: u32) -> Left {
    if !s.with_device_batch(|b| b.is_empty()) {
        return Left::Flush;
    }
    let cur = s.current.get().slot();
    let outer = s.outer.get();
    if !outer.is_tracked() && s.with_batch(|b| b.is_empty()) {
        // Nothing pending.
        return if cur == closing && s.left_net.get() == 0 && REGISTRY.alone(cur).is_some() {
            Left::Kept(Part::default())
        } else {
            Left::Done
        };
    }
    if !top || !REGISTRY.is_parent(cur, below.slot()) {
        return Left::Flush;
    }
    let deferred = outer.is_tracked();
    if deferred && outer != below {
        return Left::Flush;
    }
    // SAFETY: both thread-local; the references live until this function
    // returns, and nothing it calls (the registry) reaches this thread's
    // state.
    let (b, base) = unsafe { (&mut *s.batch.get(), &*s.outer_base.get()) };
    let base = if deferred {
        s.outer.set(ScopeId::UNTRACKED);
        base
    } else {
        &Batch::EMPTY
    };
    // From here the batch is the parent's: its highest live bytes count
    // from the batch's start, across both parts.
    let max_prefix = b.max_prefix;
    b.max_prefix = max_prefix.max(base.max_prefix);
    if b.left == base.left {
        return Left::Done;
    }
    mark_seen();
    // The scope's part is its own and its children's; their life words
    // count the children's allocations already (`left_net`), and from now
    // on the part is in the batch for the parent's chain.
    let allocations = b.allocations.wrapping_sub(base.allocations);
    let reallocs = b.reallocs.wrapping_sub(base.reallocs);
    let ops = base.left.wrapping_sub(b.left);
    // allocations − frees, frees = ops − allocations − reallocs
    let net = i64::from(
        allocations
            .wrapping_add(allocations)
            .wrapping_add(reallocs)
            .wrapping_sub(ops) as i32,
    );
    let left_net = s.left_net.replace(net);
    if net == 0 && left_net == 0 && cur == closing && REGISTRY.alone(cur).is_some() {
        return Left::Kept(Part {
            allocations: u64::from(allocations),
            bytes_allocated: b.bytes_allocated.wrapping_sub(base.bytes_allocated),
            max_prefix: max_prefix.wrapping_sub(base.live),
        });
    }
    let d = Batch { max_prefix, ..*b };
    apply_part(cur, &d, base, net.wrapping_sub(left_net));
    Left::Done
}

/// Applies the part of batch `d` since `base` to `cur`'s record alone, and
/// `own` to its life word ([`exit_deferred`]).
#[inline(never)]
fn apply_part(cur: u32, d: &Batch, base: &Batch, own: i64) {
    REGISTRY.apply_one(cur, &part_since(d, base), own);
}

/// Leaves the scope entered with `t`, in whatever order guards drop (see the
/// module docs), flushing the batch first. `closing`: the slot of the
/// scope whose last reference the caller may hold (`u32::MAX`: none).
/// Returns the scope's part of the batch when the scope is `closing`,
/// alone, and its part was not applied ([`Left::Kept`]): the caller
/// retires it.
#[inline(always)]
pub(crate) fn exit(t: EnterToken, closing: u32) -> Option<Part> {
    let s = this_thread();
    {
        // The common case: the guard's entry is the newest (read once, for
        // both the batch and the stack).
        let (top, below) = s.with_stack(|st| {
            let n = st.len;
            // No entry's sequence number is 0 (they count from 1), so a
            // token of a guard past the stack (`seq` 0) never matches one.
            if st.overflow != 0 || n == 0 || st.entries[n - 1].seq != t.seq {
                return (false, ScopeId::ROOT);
            }
            (
                true,
                if n >= 2 {
                    st.entries[n - 2]
                } else {
                    Entry::EMPTY
                }
                .id,
            )
        });
        let kept = match exit_deferred(s, top, below, closing) {
            Left::Flush => {
                flush_state(s);
                None
            }
            Left::Done => None,
            Left::Kept(part) => Some(part),
        };
        if s.mode.get() == TORN_DOWN {
            return kept;
        }
        if top {
            let below = s.with_stack(|st| {
                st.len -= 1;
                match st.len {
                    0 => Entry::EMPTY,
                    n => st.entries[n - 1],
                }
            });
            s.set_current_entry(&below);
        } else {
            exit_out_of_order(s, &t);
        }
        kept
    }
}

/// [`exit`] of a plain request scope that closes with it, in one straight
/// path without a call: the guard's entry (`t`, scope `id`, record `r`) is
/// the newest on the stack and none is past it, the thread is in that
/// scope and not torn down, no device charge is pending, the scope is
/// alone ([`Record::alone`]), and its part of the batch nets no
/// allocation. Returns that part with the stack popped, as [`exit`] does
/// for [`Left::Kept`]; `None`, having changed nothing, when any of these
/// does not hold (the caller then takes [`exit`]). Every condition is read
/// before anything is written.
#[inline(always)]
pub(crate) fn exit_alone(t: &EnterToken, id: ScopeId, r: &Record) -> Option<Part> {
    let s = this_thread();
    // SAFETY: thread-local; nothing below allocates, calls out, or reaches
    // the stack, the batch or the outer base another way while these
    // references live (they end with this function).
    let (st, b) = unsafe { (&mut *s.stack.get(), &mut *s.batch.get()) };
    let n = st.len;
    // `get` bounds the index once: `n` is 1 to `STACK_MAX` past it.
    let top = st.entries.get(n.wrapping_sub(1))?;
    if top.seq != t.seq
        || st.overflow != 0
        || s.current.get() != id
        || s.mode.get() == TORN_DOWN
        || !s.with_device_batch(|d| d.is_empty())
        || !r.alone()
    {
        return None;
    }
    let below = if n >= 2 {
        st.entries[n - 2]
    } else {
        Entry::EMPTY
    };
    let outer = s.outer.get();
    let part = if !outer.is_tracked() && b.is_empty() {
        // Nothing pending (`exit_deferred`).
        if s.left_net.get() != 0 {
            return None;
        }
        Part::default()
    } else {
        // The entry under is the scope's parent (`Registry::is_parent`,
        // from the record in hand: the scope is not in a fixed slot).
        let deferred = outer.is_tracked();
        if r.meta.0.parent.load(Relaxed) != below.id.slot().wrapping_add(1)
            || (deferred && outer != below.id)
        {
            return None;
        }
        let base: &Batch = if deferred {
            // SAFETY: thread-local, as above (read only).
            unsafe { &*s.outer_base.get() }
        } else {
            &Batch::EMPTY
        };
        if b.left == base.left {
            return None;
        }
        let allocations = b.allocations.wrapping_sub(base.allocations);
        let reallocs = b.reallocs.wrapping_sub(base.reallocs);
        let ops = base.left.wrapping_sub(b.left);
        let net = allocations
            .wrapping_add(allocations)
            .wrapping_add(reallocs)
            .wrapping_sub(ops) as i32;
        if net != 0 || s.left_net.get() != 0 {
            return None;
        }
        // From here the batch is the parent's (`exit_deferred`); the
        // operations left behind net 0, so `left_net` stays 0.
        if deferred {
            s.outer.set(ScopeId::UNTRACKED);
        }
        let max_prefix = b.max_prefix;
        b.max_prefix = max_prefix.max(base.max_prefix);
        mark_seen();
        Part {
            allocations: u64::from(allocations),
            bytes_allocated: b.bytes_allocated.wrapping_sub(base.bytes_allocated),
            max_prefix: max_prefix.wrapping_sub(base.live),
        }
    };
    st.len = n - 1;
    s.set_current_entry(&below);
    Some(part)
}

/// [`exit`] of a guard that is not the newest on its thread's stack, or
/// past [`STACK_MAX`].
#[cold]
#[inline(never)]
fn exit_out_of_order(s: &ThreadState, t: &EnterToken) {
    if t.seq == 0 {
        s.with_stack(|st| st.overflow = st.overflow.saturating_sub(1));
        s.set_current(t.prev, t.prev_direct);
        return;
    }
    let top = s.with_stack(|st| {
        let n = st.len;
        if let Some(i) = st.entries[..n].iter().rposition(|e| e.seq == t.seq) {
            st.entries.copy_within(i + 1..n, i);
            st.len -= 1;
        }
        if st.overflow != 0 {
            return None;
        }
        Some(match st.len {
            0 => Entry::EMPTY,
            n => st.entries[n - 1],
        })
    });
    if let Some(top) = top {
        s.set_current_entry(&top);
    }
}

/// The slot this thread kept for its next scope, plus 1 (0: none), taken
/// off its note: the caller claims it (`Registry::claim_kept`).
#[inline(always)]
pub(crate) fn take_kept_slot() -> u32 {
    this_thread().kept_slot.replace(0)
}

/// Whether this thread has no kept slot noted (a slot it retires may be
/// kept, then noted with [`note_kept_slot`]) and its exit hook is set and
/// has not run yet, so that a slot it keeps is listed free again when it
/// exits (`on_thread_exit`; a thread that only builds and drops handles
/// never attaches one, and a scope closed by a later thread-local
/// destructor comes after it).
#[inline(always)]
pub(crate) fn may_keep_slot() -> bool {
    let s = this_thread();
    s.kept_slot.get() == 0 && s.hook.get() == HOOK_SET && s.mode.get() != TORN_DOWN
}

/// [`may_keep_slot`] on the close of a plain request scope by its guard
/// (`handle::close_plain`): the thread entered the scope, which attached
/// its exit hook wherever one can be; a slot kept without one is still
/// taken by a full registry (`Registry::steal_kept`).
#[inline(always)]
pub(crate) fn may_keep_slot_entered() -> bool {
    this_thread().kept_slot.get() == 0
}

/// Notes `slot`, kept by this thread for its next scope.
#[inline(always)]
pub(crate) fn note_kept_slot(slot: u32) {
    this_thread().kept_slot.set(slot + 1);
}

/// The owner a compact id names (see [`ScopeId::to_compact`]); a recycled
/// owner's id names `retired`. Allocator path: no allocation, lock or panic.
#[doc(hidden)]
#[inline]
pub fn owner_from_compact(v: u32) -> ScopeId {
    REGISTRY.owner_of_compact(v)
}
