//! The fixed-capacity table of scope records: slot allocation (a lock-free free
//! list), charging a scope chain, and retirement.
//!
//! # Invariants
//! - G1 a slot is on the free list, or handed out by bumping, at most once at a
//!   time (tagged Treiber stack: each successful pop or push bumps the tag, so an
//!   ABA interleaving fails its compare-and-swap).
//! - G2 slots 0 (the process) and 1 (unattributed) are fixed: never retired,
//!   never on the free list; slot 1's parent is slot 0.
//! - G3 every walk up a chain stops at the root; it is bounded by
//!   [`MAX_DEPTH`] as well, so a corrupted link cannot loop.
//!
//! Nothing here allocates, locks or panics: the host allocator calls it.

use super::counters::{Counters, Delta};
use super::record::{CLOSED, FREE, REF, Record};
use super::sync::{AtomicU32, AtomicU64, Ordering::*};

/// Scopes that can exist at once (open, or closed but still owning memory).
/// 16,384 records of 256 B: 4 MiB of zeroed address space, touched on use.
pub const CAPACITY: usize = 16_384;
/// Slots 0 and 1 (G2).
pub(crate) const FIXED: u32 = 2;
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
            1 => Some(0),
            s => self.record(s).and_then(Record::parent),
        }
    }

    /// Takes a free slot (G1), or `None` when all `N` are in use.
    pub(crate) fn take_slot(&self) -> Option<u32> {
        loop {
            let head = self.free_head.load(Acquire);
            let idx = head as u32;
            if idx == 0 {
                break;
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
        loop {
            let n = self.next_unused.load(Relaxed);
            let slot = FIXED + n;
            if slot as usize >= N {
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

    /// Returns a retired slot to the free list (G1).
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
        let mut cur = Some(owner);
        let mut steps = 0;
        while let Some(slot) = cur {
            let Some(r) = self.record(slot) else { break };
            let live = counters(r, device).apply(d);
            if !device {
                self.check_soft(r, live);
            }
            steps += 1;
            cur = if steps < MAX_DEPTH {
                self.parent(slot)
            } else {
                None
            };
        }
        self.adjust_life(owner, d.net_allocations());
    }

    /// Charges one operation to `owner`'s chain, enforcing hard limits when it
    /// adds live host bytes. Returns false (and changes nothing) if a limit
    /// refuses it.
    pub(crate) fn charge(&self, owner: u32, d: &Delta, device: bool) -> bool {
        let limited = d.live > 0 && !device && self.budget_in_chain(owner);
        if !limited {
            self.apply_batch(owner, d, device);
            return true;
        }
        if !self.reserve_chain(owner, d.live) {
            return false;
        }
        let mut cur = Some(owner);
        let mut steps = 0;
        while let Some(slot) = cur {
            let Some(r) = self.record(slot) else { break };
            let c = &r.host.0;
            let live = c.live_bytes.load(Relaxed);
            c.commit_reserved(d, live);
            self.check_soft(r, live);
            steps += 1;
            cur = if steps < MAX_DEPTH {
                self.parent(slot)
            } else {
                None
            };
        }
        self.adjust_life(owner, d.net_allocations());
        true
    }

    /// Adds `bytes` to live bytes up the chain unless some hard limit would be
    /// exceeded, in which case everything added is taken back.
    fn reserve_chain(&self, owner: u32, bytes: i64) -> bool {
        let mut cur = Some(owner);
        let mut steps = 0;
        while let Some(slot) = cur {
            let Some(r) = self.record(slot) else { break };
            let new = r.host.0.reserve(bytes);
            let hard = r.meta.0.hard_limit.load(Relaxed);
            if hard != 0 && new > hard as i64 {
                r.host.0.unreserve(bytes);
                r.meta.0.refused.fetch_add(1, Relaxed);
                self.unreserve_until(owner, slot, bytes);
                return false;
            }
            steps += 1;
            cur = if steps < MAX_DEPTH {
                self.parent(slot)
            } else {
                None
            };
        }
        true
    }

    fn unreserve_until(&self, owner: u32, stop: u32, bytes: i64) {
        let mut cur = Some(owner);
        while let Some(slot) = cur {
            if slot == stop {
                return;
            }
            let Some(r) = self.record(slot) else { return };
            r.host.0.unreserve(bytes);
            cur = self.parent(slot);
        }
    }

    fn check_soft(&self, r: &Record, live: i64) {
        let soft = r.meta.0.soft_limit.load(Relaxed);
        if soft != 0 && live > soft as i64 {
            let prev = r.meta.0.soft_exceeded.fetch_max(live as u64, Relaxed);
            if prev == 0 {
                self.soft_pending.fetch_add(1, Release);
            }
        }
    }

    /// Adds to a record's life word (R1); retires the chain of records whose
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

    /// Drops one handle reference: closes the scope when it was the last.
    pub(crate) fn release_ref(&self, slot: u32, now_ns: u64) {
        if slot < FIXED {
            return;
        }
        let Some(r) = self.record(slot) else { return };
        if r.meta.0.refs.fetch_sub(1, AcqRel) == 1 {
            r.meta.0.closed_ns.store(now_ns, Relaxed);
            r.meta.0.state.store(CLOSED, Release);
        }
        self.adjust_life(slot, -REF);
    }

    /// Frees a slot whose life word reached zero, folding its figures into its
    /// parent and releasing the parent's child reference (iteratively).
    fn retire(&self, first: u32) {
        let mut slot = first;
        loop {
            let Some(r) = self.record(slot) else { return };
            let parent = self.parent(slot);
            if let Some(pr) = parent.and_then(|p| self.record(p)) {
                let m = &pr.meta.0;
                m.closed_children.fetch_add(1, Relaxed);
                m.closed_children_peak
                    .fetch_max(r.host.0.peak_bytes.load(Relaxed), Relaxed);
                m.closed_children_device_peak
                    .fetch_max(r.device.0.peak_bytes.load(Relaxed), Relaxed);
            }
            r.meta.0.state.store(FREE, Release);
            self.put_slot(slot);
            match parent {
                Some(p) if p >= FIXED => {
                    let pr = match self.record(p) {
                        Some(pr) => pr,
                        None => return,
                    };
                    if pr.meta.0.life.fetch_sub(REF, AcqRel) == REF {
                        slot = p;
                        continue;
                    }
                    return;
                }
                _ => return,
            }
        }
    }

    /// Whether `slot` currently holds generation `generation` and is in use.
    pub(crate) fn is_live(&self, slot: u32, generation: u32) -> bool {
        slot < FIXED
            || self.record(slot).is_some_and(|r| {
                r.meta.0.state.load(Acquire) != FREE
                    && r.meta.0.generation.load(Acquire) == generation
            })
    }
}

#[inline]
pub(crate) fn counters(r: &Record, device: bool) -> &Counters {
    if device { &r.device.0 } else { &r.host.0 }
}

#[cfg(not(loom))]
/// The process-wide registry.
pub(crate) static REGISTRY: Registry<CAPACITY> = Registry::new();
