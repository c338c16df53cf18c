//! Per-scope counters and the per-thread `Delta` that batches changes to them.
//!
//! # Invariants
//! After every thread has flushed (quiescence), for every scope, the counter
//! invariants [`ScopeInvariant::C1`] (live bytes), [`ScopeInvariant::C2`] (live
//! allocations), [`ScopeInvariant::C3`] (peak) and [`ScopeInvariant::C4`] (a
//! parent includes its children) hold; their definitions are on the variants.
//!
//! A `Delta` is a run of changes made by one thread; `max_prefix` is the highest
//! running total its live bytes reached. Applying it adds the totals and raises
//! the peak to `live_before + max_prefix`, which is exact when no other thread
//! changed the scope in between (always, single-threaded).

use super::sync::{AtomicI64, AtomicU64, Ordering::Relaxed};
#[cfg(doc)]
use crate::ScopeInvariant;

/// Operations a thread may hold back before applying its batch.
pub(crate) const OPS_PER_BATCH: u32 = 256;

/// A batch of changes to one scope chain, made by one thread.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Delta {
    pub allocations: u64,
    pub frees: u64,
    pub reallocs: u64,
    pub bytes_allocated: u64,
    pub bytes_freed: u64,
    /// Net change of live bytes.
    pub live: i64,
    /// Highest value `live` reached since the batch began (never below 0).
    pub max_prefix: i64,
    /// Operations left before the batch must be applied: counts down from
    /// [`OPS_PER_BATCH`] (one `sub` that sets the zero flag on the fast path).
    pub left: u32,
}

impl Delta {
    pub(crate) const EMPTY: Delta = Delta {
        allocations: 0,
        frees: 0,
        reallocs: 0,
        bytes_allocated: 0,
        bytes_freed: 0,
        live: 0,
        max_prefix: 0,
        left: OPS_PER_BATCH,
    };

    #[inline]
    fn grow(&mut self, bytes: u64) {
        self.bytes_allocated = self.bytes_allocated.wrapping_add(bytes);
        self.live = self.live.wrapping_add(bytes as i64);
        if self.live > self.max_prefix {
            self.max_prefix = self.live;
        }
    }

    #[inline]
    fn shrink(&mut self, bytes: u64) {
        self.bytes_freed = self.bytes_freed.wrapping_add(bytes);
        self.live = self.live.wrapping_sub(bytes as i64);
    }

    /// Records an allocation of `bytes`.
    #[inline]
    pub(crate) fn alloc(&mut self, bytes: u64) {
        self.allocations = self.allocations.wrapping_add(1);
        self.left = self.left.wrapping_sub(1);
        self.grow(bytes);
    }

    /// Records a free of `bytes`.
    #[inline]
    pub(crate) fn free(&mut self, bytes: u64) {
        self.frees = self.frees.wrapping_add(1);
        self.left = self.left.wrapping_sub(1);
        self.shrink(bytes);
    }

    /// Records a reallocation from `old` to `new` bytes: growth counts as bytes
    /// allocated, shrinking as bytes freed, so [`ScopeInvariant::C1`] holds.
    #[inline]
    pub(crate) fn realloc(&mut self, old: u64, new: u64) {
        self.reallocs = self.reallocs.wrapping_add(1);
        self.left = self.left.wrapping_sub(1);
        if new >= old {
            self.grow(new - old);
        } else {
            self.shrink(old - new);
        }
    }

    /// Net change in the number of live allocations.
    #[inline]
    pub(crate) fn net_allocations(&self) -> i64 {
        self.allocations.wrapping_sub(self.frees) as i64
    }
}

/// A thread's batch of changes to its current scope chain, in the form the
/// allocator path updates per operation: an allocation writes five fields, a
/// free two (`live` and `left`). The frees and bytes freed are derived when the
/// batch becomes a [`Delta`] ([`Batch::to_delta`]):
/// `frees = (OPS_PER_BATCH − left) − allocations − reallocs` (every operation
/// counts down `left` once) and `bytes_freed = bytes_allocated − live` (so
/// [`ScopeInvariant::C1`] holds by construction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Net change of live bytes.
    pub live: i64,
    /// Highest value `live` reached since the batch began (never below 0).
    pub max_prefix: i64,
    pub bytes_allocated: u64,
    pub allocations: u32,
    pub reallocs: u32,
    /// Operations left before the batch must be applied (counts down from
    /// [`OPS_PER_BATCH`]).
    pub left: u32,
}

impl Batch {
    pub(crate) const EMPTY: Batch = Batch {
        live: 0,
        max_prefix: 0,
        bytes_allocated: 0,
        allocations: 0,
        reallocs: 0,
        left: OPS_PER_BATCH,
    };

    #[inline(always)]
    fn grow(&mut self, bytes: u64) {
        self.bytes_allocated = self.bytes_allocated.wrapping_add(bytes);
        self.live = self.live.wrapping_add(bytes as i64);
        if self.live > self.max_prefix {
            self.max_prefix = self.live;
        }
    }

    /// Records an allocation of `bytes`; true when the batch must be applied
    /// now (its operations are used up or its net live bytes passed
    /// `limit`).
    ///
    /// Only the upper bound is tested: a batch is applied as soon as it is
    /// due, so at rest `live` lies in `[-limit, limit]` and `max_prefix <=
    /// limit`; an allocation only raises `live`, and `live > limit` implies
    /// `live > max_prefix`, so the bound is tested only when the high-water
    /// mark moves (never on a steady alloc/free cycle).
    #[inline(always)]
    pub(crate) fn alloc(&mut self, bytes: u64, limit: i64) -> bool {
        self.allocations = self.allocations.wrapping_add(1);
        self.bytes_allocated = self.bytes_allocated.wrapping_add(bytes);
        self.live = self.live.wrapping_add(bytes as i64);
        if self.live > self.max_prefix {
            return self.raise(limit);
        }
        self.left = self.left.wrapping_sub(1);
        self.left == 0
    }

    /// The rest of [`Batch::alloc`] when `live` passed the high-water mark.
    #[inline(always)]
    fn raise(&mut self, limit: i64) -> bool {
        self.max_prefix = self.live;
        self.left = self.left.wrapping_sub(1);
        self.left == 0 || self.live > limit
    }

    /// Records a free of `bytes`; true when the batch must be applied now
    /// (operations used up, or `live` below `-limit`: a free only lowers
    /// `live`, so only the lower bound is tested, see [`Batch::alloc`]).
    #[inline(always)]
    pub(crate) fn free(&mut self, bytes: u64, limit: i64) -> bool {
        // `left` first, tested on its own: a decrement of memory and a
        // branch on its flags, with nothing kept in a register.
        self.left = self.left.wrapping_sub(1);
        let used_up = self.left == 0;
        self.live = self.live.wrapping_sub(bytes as i64);
        used_up || self.live < -limit
    }

    /// Records a reallocation from `old` to `new` bytes (growth counts as
    /// bytes allocated, shrinking as bytes freed); true when due.
    #[inline]
    pub(crate) fn realloc(&mut self, old: u64, new: u64, limit: i64) -> bool {
        self.reallocs = self.reallocs.wrapping_add(1);
        self.left = self.left.wrapping_sub(1);
        if new >= old {
            self.grow(new - old);
        } else {
            self.live = self.live.wrapping_sub((old - new) as i64);
        }
        self.due(limit)
    }

    /// Operations used up, or `live` outside `[-limit, limit]` (one unsigned
    /// compare covers both signs).
    #[inline(always)]
    fn due(&self, limit: i64) -> bool {
        self.left == 0 || self.live.wrapping_add(limit) as u64 > 2 * limit as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.left == OPS_PER_BATCH
    }

    /// The batch as the counters apply it, the derived fields filled in.
    pub(crate) fn to_delta(self) -> Delta {
        let ops = OPS_PER_BATCH.wrapping_sub(self.left);
        let frees = ops
            .wrapping_sub(self.allocations)
            .wrapping_sub(self.reallocs);
        Delta {
            allocations: u64::from(self.allocations),
            frees: u64::from(frees),
            reallocs: u64::from(self.reallocs),
            bytes_allocated: self.bytes_allocated,
            bytes_freed: self.bytes_allocated.wrapping_sub(self.live as u64),
            live: self.live,
            max_prefix: self.max_prefix,
            left: self.left,
        }
    }
}

/// The shared counters of one scope, for host or for device memory.
pub(crate) struct Counters {
    pub allocations: AtomicU64,
    pub frees: AtomicU64,
    pub reallocs: AtomicU64,
    pub bytes_allocated: AtomicU64,
    pub bytes_freed: AtomicU64,
    pub live_bytes: AtomicI64,
    pub peak_bytes: AtomicI64,
}

/// A plain copy of [`Counters`].
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct CounterValues {
    pub allocations: u64,
    pub frees: u64,
    pub reallocs: u64,
    pub bytes_allocated: u64,
    pub bytes_freed: u64,
    pub live_bytes: i64,
    pub peak_bytes: i64,
}

impl Counters {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Counters {
            allocations: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            bytes_allocated: AtomicU64::new(0),
            bytes_freed: AtomicU64::new(0),
            live_bytes: AtomicI64::new(0),
            peak_bytes: AtomicI64::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Counters {
            allocations: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            bytes_allocated: AtomicU64::new(0),
            bytes_freed: AtomicU64::new(0),
            live_bytes: AtomicI64::new(0),
            peak_bytes: AtomicI64::new(0),
        }
    }

    /// Adds a batch; raises the peak to `live_before + max_prefix`. Zero fields
    /// cost nothing. Returns live bytes after the batch.
    pub(crate) fn apply(&self, d: &Delta) -> i64 {
        add_if(&self.allocations, d.allocations);
        add_if(&self.frees, d.frees);
        add_if(&self.reallocs, d.reallocs);
        add_if(&self.bytes_allocated, d.bytes_allocated);
        add_if(&self.bytes_freed, d.bytes_freed);
        let before = if d.live != 0 {
            self.live_bytes.fetch_add(d.live, Relaxed)
        } else {
            self.live_bytes.load(Relaxed)
        };
        if d.max_prefix > 0 {
            self.peak_bytes
                .fetch_max(before.wrapping_add(d.max_prefix), Relaxed);
        }
        before.wrapping_add(d.live)
    }

    /// Takes back bytes a budget reservation added to live bytes.
    pub(crate) fn unreserve(&self, bytes: i64) {
        self.live_bytes.fetch_sub(bytes, Relaxed);
    }

    /// Records the totals of an allocation whose live bytes were reserved.
    pub(crate) fn commit_reserved(&self, d: &Delta, live_now: i64) {
        add_if(&self.allocations, d.allocations);
        add_if(&self.reallocs, d.reallocs);
        add_if(&self.bytes_allocated, d.bytes_allocated);
        self.peak_bytes.fetch_max(live_now, Relaxed);
    }

    /// Sets the peak to the current live bytes.
    pub(crate) fn reset_peak(&self) {
        let live = self.live_bytes.load(Relaxed);
        self.peak_bytes.store(live.max(0), Relaxed);
    }

    /// Zeroes everything (a recycled slot).
    pub(crate) fn clear(&self) {
        for a in [
            &self.allocations,
            &self.frees,
            &self.reallocs,
            &self.bytes_allocated,
            &self.bytes_freed,
        ] {
            a.store(0, Relaxed);
        }
        self.live_bytes.store(0, Relaxed);
        self.peak_bytes.store(0, Relaxed);
    }

    pub(crate) fn read(&self) -> CounterValues {
        CounterValues {
            allocations: self.allocations.load(Relaxed),
            frees: self.frees.load(Relaxed),
            reallocs: self.reallocs.load(Relaxed),
            bytes_allocated: self.bytes_allocated.load(Relaxed),
            bytes_freed: self.bytes_freed.load(Relaxed),
            live_bytes: self.live_bytes.load(Relaxed),
            peak_bytes: self.peak_bytes.load(Relaxed),
        }
    }
}

#[inline]
fn add_if(a: &AtomicU64, v: u64) {
    if v != 0 {
        a.fetch_add(v, Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The one-sided bound tests of `Batch::alloc` and `Batch::free` against
    /// the two-sided rule they replace (`live` outside `[-limit, limit]` or
    /// the operations used up), on random runs where the batch is applied
    /// (reset) whenever it says it is due; and the batch against a `Delta`
    /// model after every step.
    #[test]
    fn one_sided_bounds_match_the_two_sided_rule_when_applied_on_time() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for limit in [1i64, 100, 4096, 256 << 10] {
            let mut b = Batch::EMPTY;
            let mut d = Delta::EMPTY;
            for step in 0..200_000u32 {
                let bytes = match rnd() % 4 {
                    0 => rnd() % 8,
                    1 => rnd() % (limit as u64 / 2 + 1),
                    2 => rnd() % (limit as u64 + 2),
                    _ => rnd() % (2 * limit as u64 + 2),
                };
                let (due, op) = match rnd() % 5 {
                    0 | 1 => (b.alloc(bytes, limit), 0),
                    2 | 3 => (b.free(bytes, limit), 1),
                    _ => (b.realloc(bytes, rnd() % (limit as u64 + 1), limit), 2),
                };
                match op {
                    0 => d.alloc(bytes),
                    1 => d.free(bytes),
                    _ => {}
                }
                let two_sided = b.left == 0 || b.live < -limit || b.live > limit;
                assert_eq!(due, two_sided, "limit {limit}, step {step}, op {op}, {b:?}");
                if op != 2 {
                    assert_eq!(b.live, d.live, "step {step}");
                    assert_eq!(b.max_prefix, d.max_prefix, "step {step}");
                }
                if due {
                    b = Batch::EMPTY;
                    d = Delta::EMPTY;
                } else if op == 2 {
                    // Keep the model in step after a realloc.
                    d.live = b.live;
                    d.max_prefix = b.max_prefix;
                }
            }
        }
    }

    #[test]
    fn max_prefix_tracks_the_high_water_mark_of_a_batch() {
        let mut d = Delta::EMPTY;
        d.alloc(100);
        d.alloc(50);
        d.free(120);
        d.realloc(30, 80);
        assert_eq!(d.live, 80);
        assert_eq!(d.max_prefix, 150);
        let c = Counters::new();
        c.live_bytes.store(1000, Relaxed);
        c.peak_bytes.store(1000, Relaxed);
        assert_eq!(c.apply(&d), 1080);
        let v = c.read();
        assert_eq!(v.peak_bytes, 1150);
        assert_eq!(v.bytes_allocated, 200);
        assert_eq!(v.bytes_freed, 120);
        assert_eq!(v.reallocs, 1);
        assert_eq!(d.net_allocations(), 1);
    }

    #[test]
    fn a_batch_derives_the_same_delta_as_counting_every_field() {
        let mut b = Batch::EMPTY;
        let mut d = Delta::EMPTY;
        let ops: [(u8, u64, u64); 7] = [
            (0, 100, 0),
            (0, 50, 0),
            (1, 120, 0),
            (2, 30, 80),
            (2, 80, 10),
            (1, 10, 0),
            (0, 7, 0),
        ];
        for (op, x, y) in ops {
            match op {
                0 => {
                    b.alloc(x, 1 << 20);
                    d.alloc(x);
                }
                1 => {
                    b.free(x, 1 << 20);
                    d.free(x);
                }
                _ => {
                    b.realloc(x, y, 1 << 20);
                    d.realloc(x, y);
                }
            }
            assert_eq!(b.to_delta(), d, "after op {op} {x} {y}");
        }
        assert!(!b.is_empty());
        let mut due = Batch::EMPTY;
        assert!(!due.alloc(100, 100));
        assert!(due.alloc(1, 100), "live 101 > limit 100");
        let mut due = Batch::EMPTY;
        assert!(due.free(101, 100), "live -101 < -limit");
        let mut due = Batch::EMPTY;
        for i in 1..OPS_PER_BATCH {
            assert!(!due.alloc(0, 100), "op {i}");
        }
        assert!(due.free(0, 100), "the last operation of the batch");
    }
}
