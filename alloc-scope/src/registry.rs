//! The fixed-capacity table of scope records: slot allocation (a lock-free free
//! list), charging a scope chain, and retirement.
//!
//! # Invariants
//! The registry keeps [`ScopeInvariant::G1`] (slot exclusivity),
//! [`ScopeInvariant::G2`] (fixed slots), [`ScopeInvariant::G3`] (bounded walks)
//! and [`ScopeInvariant::G4`] (hard budgets); their definitions are on the
//! variants.
//!
//! Nothing here allocates, locks or panics: the host allocator calls it. The one
//! wait ([`ScopeInvariant::R4`], recycling a closed slot) happens only when a
//! scope is opened, never in an allocator path.

use super::counters::{Counters, Delta};
use super::record::{CLOSED, EVICTING, FREE, REF, Record};
use super::sync::{AtomicI64, AtomicU32, AtomicU64, Ordering::*};
#[cfg(doc)]
use crate::ScopeInvariant;

/// Scopes that can exist at once (open, or closed but still owning memory).
/// 16,384 records of 256 B: 4 MiB of zeroed address space, touched on use.
pub const CAPACITY: usize = 16_384;
/// Slots 0, 1 and 2 ([`ScopeInvariant::G2`]).
pub(crate) const FIXED: u32 = 3;
/// The fixed slot that receives the live figures of recycled scopes.
pub(crate) const RETIRED: u32 = 2;
/// Longest parent chain followed; deeper nesting is charged up to this depth.
pub const MAX_DEPTH: u32 = 1024;

pub(crate) struct Registry<const N: usize> {
    records: [Record; N],
    /// tag << 32 | (slot + 1); low half 0 when empty.
    free_head: AtomicU64,
    /// Slots handed out by bumping, beyond the fixed ones.
    next_unused: AtomicU32,
    /// Scopes not created because every slot was in use.
    pub(crate) dropped: AtomicU64,
    /// Soft-limit crossings not yet reported to callbacks.
    pub(crate) soft_pending: AtomicU32,
    /// Closed scopes whose slot was recycled while they still owned memory.
    pub(crate) evicted: AtomicU64,
    /// Where the next search for a slot to recycle starts.
    evict_cursor: AtomicU32,
    /// Records looked at to find a slot with none listed free (the
    /// searches for a closed slot to recycle and for a kept slot).
    pub(crate) examined: AtomicU64,
}

impl<const N: usize> Registry<N> {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Registry {
            records: [const { Record::new() }; N],
            free_head: AtomicU64::new(0),
            next_unused: AtomicU32::new(0),
            dropped: AtomicU64::new(0),
            soft_pending: AtomicU32::new(0),
            evicted: AtomicU64::new(0),
            evict_cursor: AtomicU32::new(0),
            examined: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Registry {
            records: core::array::from_fn(|_| Record::new()),
            free_head: AtomicU64::new(0),
            next_unused: AtomicU32::new(0),
            dropped: AtomicU64::new(0),
            soft_pending: AtomicU32::new(0),
            evicted: AtomicU64::new(0),
            evict_cursor: AtomicU32::new(0),
            examined: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, slot: u32) -> Option<&Record> {
        self.records.get(slot as usize)
    }

    /// Number of slots ever handed out (fixed ones included): the range to scan.
    pub(crate) fn high_water(&self) -> u32 {
        (FIXED + self.next_unused.load(Acquire)).min(N as u32)
    }

    #[inline]
    pub(crate) fn parent(&self, slot: u32) -> Option<u32> {
        match slot {
            0 => None,
            1 | RETIRED => Some(0),
            s => self.record(s).and_then(Record::parent),
        }
    }

    /// Whether `parent` is `slot`'s parent ([`Registry::parent`], without
    /// the `Option`).
    #[inline]
    pub(crate) fn is_parent(&self, slot: u32, parent: u32) -> bool {
        match slot {
            0 => false,
            1 | RETIRED => parent == 0,
            s => self
                .record(s)
                .is_some_and(|r| r.meta.0.parent.load(Relaxed) == parent.wrapping_add(1)),
        }
    }

    /// `from` and its ancestors up to the root, at most [`MAX_DEPTH`] of them
    /// ([`ScopeInvariant::G3`]: a corrupted link cannot loop).
    #[inline]
    pub(crate) fn chain(&self, from: Option<u32>) -> impl Iterator<Item = u32> + '_ {
        let mut cur = from;
        let mut steps = 0;
        core::iter::from_fn(move || {
            let slot = cur?;
            steps += 1;
            cur = if steps < MAX_DEPTH {
                self.parent(slot)
            } else {
                None
            };
            Some(slot)
        })
    }

    /// Takes a free slot ([`ScopeInvariant::G1`]), or `None` when all `N` are in use.
    #[inline]
    pub(crate) fn take_slot(&self) -> Option<u32> {
        loop {
            let head = self.free_head.load(Acquire);
            let idx = head as u32;
            if idx == 0 {
                return self.take_unused();
            }
            let next = self.record(idx - 1)?.meta.0.next_free.load(Relaxed);
            let new = (((head >> 32) + 1) << 32) | u64::from(next);
            if self
                .free_head
                .compare_exchange(head, new, AcqRel, Acquire)
                .is_ok()
            {
                return Some(idx - 1);
            }
        }
    }

    /// [`Registry::take_slot`] with the free list empty: a slot never used,
    /// or a closed one recycled, or, with nothing closed left, a slot a
    /// thread kept (out of line: a process reaches it only until its scopes
    /// reuse slots, or with the registry full).
    ///
    /// Recycling comes first: its search goes on from where the last one
    /// stopped, so with the registry full of closed scopes (a server whose
    /// requests each leave a block behind) an open looks at about one
    /// record. The search for a kept slot looks at every record, and a
    /// living thread's kept slot is its own next scope's anyway (a thread
    /// that exits lists its kept slot free, `thread::on_thread_exit`).
    #[cold]
    #[inline(never)]
    fn take_unused(&self) -> Option<u32> {
        loop {
            let n = self.next_unused.load(Relaxed);
            let slot = FIXED + n;
            if slot as usize >= N {
                if let Some(slot) = self.evict_one().or_else(|| self.steal_kept()) {
                    return Some(slot);
                }
                self.dropped.fetch_add(1, Relaxed);
                return None;
            }
            if self
                .next_unused
                .compare_exchange(n, n + 1, AcqRel, Relaxed)
                .is_ok()
            {
                return Some(slot);
            }
        }
    }

    /// Takes a free slot kept by a thread for its next scope
    /// ([`Registry::retire_alone`]), with no other slot left and nothing
    /// closed to recycle: kept slots count as free, so the registry is full
    /// only when every slot holds an open scope.
    fn steal_kept(&self) -> Option<u32> {
        let mut looked = 0;
        let found = (FIXED..self.high_water()).find(|&slot| {
            looked += 1;
            self.claim_kept(slot).is_some()
        });
        self.examined.fetch_add(looked, Relaxed);
        found
    }

    /// Takes `slot` if it is still kept for a next scope (by this thread's
    /// note, or any thread's when stealing): exactly one claimant of a kept
    /// slot gets it ([`ScopeInvariant::G1`]); the acquire sees everything
    /// its retirement wrote. Returns the slot's record when it did.
    #[inline]
    pub(crate) fn claim_kept(&self, slot: u32) -> Option<&Record> {
        self.record(slot)
            .filter(|r| r.meta.0.kept.swap(0, Acquire) == 1)
    }

    /// Returns a retired slot to the free list ([`ScopeInvariant::G1`]).
    pub(crate) fn put_slot(&self, slot: u32) {
        let Some(r) = self.record(slot) else { return };
        loop {
            let head = self.free_head.load(Acquire);
            r.meta.0.next_free.store(head as u32, Relaxed);
            let new = (((head >> 32) + 1) << 32) | u64::from(slot + 1);
            if self
                .free_head
                .compare_exchange(head, new, AcqRel, Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Whether `owner` or an ancestor carries a budget.
    #[inline]
    pub(crate) fn budget_in_chain(&self, owner: u32) -> bool {
        self.record(owner)
            .is_some_and(|r| r.meta.0.budget_in_chain.load(Relaxed) != 0)
    }

    /// Applies a batch to `owner` and every ancestor; the owner's life word
    /// changes by the batch's net allocations. No budget check: used for batches
    /// of chains without budgets.
    pub(crate) fn apply_batch(&self, owner: u32, d: &Delta, device: bool) {
        self.apply_chain(owner, d, device);
        self.adjust_life(owner, d.net_allocations());
    }

    /// Applies a batch to `owner` and every ancestor, leaving life words to
    /// the caller (a thread's batch can hold operations of a scope it left,
    /// whose life word already counts them).
    pub(crate) fn apply_chain(&self, owner: u32, d: &Delta, device: bool) {
        for slot in self.chain(Some(owner)) {
            let Some(r) = self.record(slot) else { break };
            let live = written(r, device).apply(d);
            if !device {
                self.check_soft(r, live);
            }
        }
    }

    /// Applies a batch of host operations to `slot` alone (its ancestors are
    /// charged by the caller, later, through their own chain), and `life`
    /// (its net allocations that are `slot`'s own) to `slot`'s life word.
    pub(crate) fn apply_one(&self, slot: u32, d: &Delta, life: i64) {
        if let Some(r) = self.record(slot) {
            let live = written(r, false).apply(d);
            self.check_soft(r, live);
        }
        self.adjust_life(slot, life);
    }

    /// The scope a compact id names (see `ScopeId::to_compact`): the slot's
    /// current scope when the generation's low bits match, else [`RETIRED`]
    /// (the owner was recycled; `pin` makes the same call again, exactly).
    pub(crate) fn owner_of_compact(&self, v: u32) -> super::ScopeId {
        use super::id::{COMPACT_GEN_MASK, COMPACT_SLOT_BITS, COMPACT_SLOT_MASK};
        if v == 0 {
            return super::ScopeId::UNTRACKED;
        }
        let v = v - 1;
        let slot = v & COMPACT_SLOT_MASK;
        if slot < FIXED {
            return super::ScopeId::new(slot, 0);
        }
        let Some(r) = self.record(slot) else {
            return super::ScopeId::new(RETIRED, 0);
        };
        let generation = r.meta.0.generation.load(Acquire);
        if generation & COMPACT_GEN_MASK == v >> COMPACT_SLOT_BITS {
            super::ScopeId::new(slot, generation)
        } else {
            super::ScopeId::new(RETIRED, 0)
        }
    }

    /// Pins `owner`'s slot for a charge from outside the scope
    /// ([`ScopeInvariant::R4`]) and
    /// returns the slot to charge: the owner's, or [`RETIRED`] when the owner's
    /// slot was recycled. Every `Some(slot)` with `slot >= FIXED` must be
    /// followed by [`Registry::unpin`].
    #[inline]
    pub(crate) fn pin(&self, owner: u32, generation: u32) -> u32 {
        if owner < FIXED {
            return owner;
        }
        let Some(r) = self.record(owner) else {
            return RETIRED;
        };
        let m = &r.meta.0;
        // Both sides use read-modify-writes (here and in `evict`): of two
        // threads that each write one word and then read the other, at least
        // one sees the other's write (scope:R4).
        m.pins.fetch_add(1, AcqRel);
        if m.generation.fetch_add(0, AcqRel) & super::id::GEN_MASK == generation {
            owner
        } else {
            m.pins.fetch_sub(1, Release);
            RETIRED
        }
    }

    /// Ends a [`Registry::pin`].
    #[inline]
    pub(crate) fn unpin(&self, slot: u32) {
        if slot < FIXED {
            return;
        }
        if let Some(r) = self.record(slot) {
            r.meta.0.pins.fetch_sub(1, Release);
        }
    }

    /// Applies one operation (or a batch) of `owner`, a scope that may be
    /// closed or recycled, from any thread: pinned, so a recycled owner's
    /// charge goes to `retired` instead.
    pub(crate) fn charge_owner(&self, owner: super::ScopeId, d: &Delta, device: bool) {
        let slot = self.pin(owner.slot(), owner.generation());
        self.apply_batch(slot, d, device);
        self.unpin(slot);
    }

    /// Reserves `bytes` of host live bytes along `owner`'s chain, checking every
    /// hard limit with a compare-and-swap ([`ScopeInvariant::G4`]); returns false, with nothing
    /// changed, when a limit refuses.
    pub(crate) fn reserve_chain(&self, owner: u32, bytes: i64) -> bool {
        for slot in self.chain(Some(owner)) {
            let Some(r) = self.record(slot) else { break };
            let hard = r.meta.0.hard_limit.load(Relaxed);
            let live = &written(r, false).live_bytes;
            if hard == 0 {
                live.fetch_add(bytes, Relaxed);
            } else {
                let mut seen = live.load(Relaxed);
                loop {
                    let new = i128::from(seen) + i128::from(bytes);
                    if new > i128::from(hard) {
                        r.meta.0.refused.fetch_add(1, Relaxed);
                        self.unreserve_until(owner, slot, bytes);
                        return false;
                    }
                    match live.compare_exchange_weak(seen, new as i64, Relaxed, Relaxed) {
                        Ok(_) => break,
                        Err(now) => seen = now,
                    }
                }
            }
        }
        true
    }

    /// Takes back a whole [`Registry::reserve_chain`] (the allocation failed).
    pub(crate) fn unreserve_chain(&self, owner: u32, bytes: i64) {
        self.unreserve_until(owner, u32::MAX, bytes);
    }

    fn unreserve_until(&self, owner: u32, stop: u32, bytes: i64) {
        for slot in self.chain(Some(owner)) {
            if slot == stop {
                return;
            }
            let Some(r) = self.record(slot) else { return };
            written(r, false).unreserve(bytes);
        }
    }

    /// Records the totals and peaks of an operation whose live bytes
    /// [`Registry::reserve_chain`] reserved, and its life change.
    pub(crate) fn commit_reserved(&self, owner: u32, d: &Delta) {
        for slot in self.chain(Some(owner)) {
            let Some(r) = self.record(slot) else { break };
            let c = written(r, false);
            let live = c.live_bytes.load(Relaxed);
            c.commit_reserved(d, live);
            self.check_soft(r, live);
        }
        self.adjust_life(owner, d.net_allocations());
    }

    /// Charges one operation to `owner`'s chain (a scope that cannot be
    /// recycled meanwhile: open, or fixed), enforcing hard limits when it adds
    /// live host bytes. Returns false (and changes nothing) if a limit refuses.
    pub(crate) fn charge(&self, owner: u32, d: &Delta, device: bool) -> bool {
        let limited = d.live > 0 && !device && self.budget_in_chain(owner);
        if !limited {
            self.apply_batch(owner, d, device);
            return true;
        }
        if !self.reserve_chain(owner, d.live) {
            return false;
        }
        self.commit_reserved(owner, d);
        true
    }

    fn check_soft(&self, r: &Record, live: i64) {
        let soft = r.meta.0.soft_limit.load(Relaxed);
        if soft != 0 && i128::from(live) > i128::from(soft) {
            let prev = r.meta.0.soft_exceeded.fetch_max(live as u64, Relaxed);
            if prev == 0 {
                self.soft_pending.fetch_add(1, Release);
            }
        }
    }

    /// Adds to a record's life word ([`ScopeInvariant::R1`]); retires the chain of records whose
    /// life reaches zero.
    pub(crate) fn adjust_life(&self, slot: u32, delta: i64) {
        if delta == 0 || slot < FIXED {
            return;
        }
        let Some(r) = self.record(slot) else { return };
        if r.meta.0.life.fetch_add(delta, AcqRel).wrapping_add(delta) == 0 {
            self.retire(slot);
        }
    }

    /// Drops one handle reference without touching the life word; returns
    /// true when it was the last (the scope is now closed). The caller then
    /// calls `adjust_life(slot, -REF)`.
    pub(crate) fn close_ref(&self, slot: u32, closed_at: u64) -> bool {
        if slot < FIXED {
            return false;
        }
        let Some(r) = self.record(slot) else {
            return false;
        };
        if r.meta.0.refs.fetch_sub(1, AcqRel) == 1 {
            r.meta.0.closed_at.store(closed_at, Relaxed);
            r.meta.0.state.store(CLOSED, Release);
            return true;
        }
        false
    }

    /// The record of `slot` when its caller holds the scope's only
    /// reference and the scope owns nothing (its life word is exactly one
    /// reference, [`ScopeInvariant::R1`]): then nothing else can reach the
    /// record until the caller retires it with [`Registry::retire_alone`].
    /// Every other thread that could charge it holds a reference (a guard
    /// or handle: each is one), and a free from outside needs a block it
    /// owns (each is one in the low half); a charge applied before this
    /// reads the word is seen whole (its life change is its last write,
    /// an acquire-release read-modify-write). The caller must also know
    /// that no charge of the scope is pending in its own thread's batch
    /// with a life change (`thread.rs`, `exit_deferred`).
    #[inline]
    pub(crate) fn alone(&self, slot: u32) -> Option<&Record> {
        if slot < FIXED {
            return None;
        }
        self.record(slot).filter(|r| r.alone())
    }

    /// Retires `slot`, closed by the holder of its only reference
    /// ([`Registry::alone`]) once its figures were read, with plain stores
    /// where [`Registry::close_ref`] and [`Registry::adjust_life`] take
    /// read-modify-writes (nothing else refers to the slot): the slot goes
    /// from open to free without a closed state, its peaks (`host_peak`:
    /// the record's, with the caller's pending part) go to its parent, and
    /// it returns to the free list, or with `keep` is kept for the calling
    /// thread's next scope ([`Registry::claim_kept`]; the caller notes the
    /// slot); the parent's reference is dropped, and a parent whose last
    /// life that was retires too.
    /// Returns the parent when that was its last life: the caller retires
    /// it with [`Registry::retire`] (a call left to the end of its path).
    #[inline(always)]
    #[must_use]
    pub(crate) fn retire_alone(
        &self,
        slot: u32,
        r: &Record,
        host_peak: i64,
        keep: bool,
    ) -> Option<u32> {
        let m = &r.meta.0;
        // `refs` stays 1: it is read only by `close_ref` on an open scope,
        // and the next `Record::open` stores it.
        m.life.store(0, Relaxed);
        m.state.store(FREE, Release);
        // The parent's record looked up once, for its peaks and its
        // reference.
        let parent = r.parent().and_then(|p| Some((p, self.record(p)?)));
        if let Some((_, pr)) = parent {
            fold_peaks_of(pr, host_peak, r.device.0.peak_bytes.load(Relaxed));
        }
        if keep {
            m.kept.store(1, Release);
        } else {
            self.put_slot(slot);
        }
        let (p, pr) = parent?;
        (p >= FIXED && pr.meta.0.life.fetch_sub(REF, AcqRel) == REF).then_some(p)
    }

    /// Drops one handle reference: closes the scope when it was the last.
    #[cfg(loom)]
    pub(crate) fn release_ref(&self, slot: u32, closed_at: u64) {
        self.close_ref(slot, closed_at);
        self.adjust_life(slot, -REF);
    }

    /// Frees a slot whose life word reached zero, folding its figures into its
    /// parent and releasing the parent's child reference (iteratively). A slot
    /// being recycled (EVICTING) is left to the recycler.
    #[inline(never)]
    pub(crate) fn retire(&self, first: u32) {
        let mut slot = first;
        loop {
            let Some(r) = self.record(slot) else { return };
            // Claim the slot; a recycler that claimed it first (EVICTING)
            // finishes the job itself, so a slot is never handed out twice.
            if r.meta
                .0
                .state
                .compare_exchange(CLOSED, FREE, AcqRel, Acquire)
                .is_err()
            {
                return;
            }
            let Some(parent) = self.fold_into_parent(slot) else {
                self.put_slot(slot);
                return;
            };
            self.put_slot(slot);
            match self.drop_child_ref(parent) {
                Some(p) => slot = p,
                None => return,
            }
        }
    }

    /// Records a closing child's peaks in its parent; returns the parent.
    fn fold_into_parent(&self, slot: u32) -> Option<u32> {
        let r = self.record(slot)?;
        let parent = self.parent(slot);
        if let Some(p) = parent {
            self.fold_peaks(
                p,
                r.host.0.peak_bytes.load(Relaxed),
                r.device.0.peak_bytes.load(Relaxed),
            );
        }
        parent
    }

    /// Counts a closed child of `parent` with these peaks.
    #[inline]
    fn fold_peaks(&self, parent: u32, host_peak: i64, device_peak: i64) {
        if let Some(pr) = self.record(parent) {
            fold_peaks_of(pr, host_peak, device_peak);
        }
    }

    /// Releases a child's reference on `parent`; returns it when that was its
    /// last life (it must retire next).
    fn drop_child_ref(&self, parent: u32) -> Option<u32> {
        if parent < FIXED {
            return None;
        }
        let pr = self.record(parent)?;
        (pr.meta.0.life.fetch_sub(REF, AcqRel) == REF).then_some(parent)
    }

    /// Recycles one closed slot that still owns memory
    /// ([`ScopeInvariant::R4`]): its remaining
    /// live figures move to [`RETIRED`], and the slot is returned for reuse.
    fn evict_one(&self) -> Option<u32> {
        let high = self.high_water();
        if high <= FIXED {
            return None;
        }
        let span = high - FIXED;
        let start = self.evict_cursor.fetch_add(1, Relaxed) % span;
        let found = (0..span).find_map(|i| {
            let slot = FIXED + (start + i) % span;
            let r = self.record(slot)?;
            (r.meta.0.state.load(Acquire) == CLOSED
                && r.meta
                    .0
                    .state
                    .compare_exchange(CLOSED, EVICTING, AcqRel, Acquire)
                    .is_ok())
            .then_some((i, slot, r))
        });
        let Some((i, slot, r)) = found else {
            self.examined.fetch_add(u64::from(span), Relaxed);
            return None;
        };
        self.examined.fetch_add(u64::from(i) + 1, Relaxed);
        self.evict(slot, r);
        self.evict_cursor.store(start + i + 1, Relaxed);
        Some(slot)
    }

    /// The recycling itself, on a slot this thread claimed (EVICTING).
    fn evict(&self, slot: u32, r: &Record) {
        let m = &r.meta.0;
        m.generation.fetch_add(1, AcqRel);
        while m.pins.fetch_add(0, AcqRel) != 0 {
            super::sync::spin();
        }
        // Exclusive now: no charge can reach this slot (scope:R4). Its counters hold
        // its own live figures only (children hold a reference while open, and
        // closed children either retired with nothing live or were recycled,
        // moving their live figures out of this chain).
        for device in [false, true] {
            let v = counters(r, device).read();
            let live = v.live_bytes;
            let blocks = v.allocations.wrapping_sub(v.frees);
            if live == 0 && blocks == 0 {
                continue;
            }
            // The ancestors see the blocks as freed; `retired` as allocated.
            let mut out = Delta::EMPTY;
            out.frees = blocks;
            out.bytes_freed = live as u64;
            out.live = -live;
            let mut into = Delta::EMPTY;
            into.allocations = blocks;
            into.bytes_allocated = live as u64;
            into.live = live;
            into.max_prefix = live.max(0);
            // The process root sees both (its live bytes do not change), so
            // scope:C1–scope:C4 hold everywhere.
            for p in self.chain(self.parent(slot)) {
                if let Some(pr) = self.record(p) {
                    written(pr, device).apply(&out);
                }
            }
            for p in [RETIRED, 0] {
                if let Some(pr) = self.record(p) {
                    written(pr, device).apply(&into);
                }
            }
        }
        self.evicted.fetch_add(1, Relaxed);
        m.life.store(0, Relaxed);
        if let Some(parent) = self.fold_into_parent(slot) {
            if let Some(p) = self.drop_child_ref(parent) {
                self.retire(p);
            }
        }
        m.state.store(FREE, Release);
    }

    /// Whether `slot` currently holds generation `generation` and is in use.
    pub(crate) fn is_live(&self, slot: u32, generation: u32) -> bool {
        slot < FIXED
            || self.record(slot).is_some_and(|r| {
                r.meta.0.state.load(Acquire) != FREE
                    && r.meta.0.generation.load(Acquire) & super::id::GEN_MASK == generation
            })
    }
}

/// [`Registry::fold_peaks`] of the parent's record `pr`.
#[inline]
fn fold_peaks_of(pr: &Record, host_peak: i64, device_peak: i64) {
    let m = &pr.meta.0;
    m.closed_children.fetch_add(1, Relaxed);
    raise(&m.closed_children_peak, host_peak);
    raise(&m.closed_children_device_peak, device_peak);
}

/// `a.fetch_max(v)`, with the read-modify-write only when `v` is above the
/// value read: a maximum only rises, so a `v` at or below a value seen could
/// not have raised it later either.
#[inline]
fn raise(a: &AtomicI64, v: i64) {
    if v > a.load(Relaxed) {
        a.fetch_max(v, Relaxed);
    }
}

/// The counters of `r` about to be written: marks the record written
/// (`Meta::written`), with one load and no store once it is, so that the
/// record's next scope clears them.
#[inline]
fn written(r: &Record, device: bool) -> &Counters {
    let w = &r.meta.0.written;
    if w.load(Relaxed) == 0 {
        w.store(1, Relaxed);
    }
    counters(r, device)
}

#[inline]
pub(crate) fn counters(r: &Record, device: bool) -> &Counters {
    if device { &r.device.0 } else { &r.host.0 }
}

#[cfg(not(loom))]
/// The process-wide registry.
pub(crate) static REGISTRY: Registry<CAPACITY> = Registry::new();
