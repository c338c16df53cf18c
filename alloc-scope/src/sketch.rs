//! The distribution of one figure (bytes) over many values: log-linear
//! buckets (HdrHistogram's layout) whose quantiles are within 1% of the exact
//! ones, recorded into fixed atomics (no lock, no allocation) and read into a
//! [`PeakSummary`].
//!
//! **Buckets.** Values up to 128 have a bucket each (exact). Above, each
//! range `(2^k, 2^(k+1)]` is cut into 64 equal buckets of width `2^(k-6)`, up
//! to `2^48` (256 TiB); values above `2^48` share one last bucket. A bucket's
//! width is at most 1/64 of its lowest value, so its midpoint is
//! within 1/128 (0.78%) of any value in it: a quantile estimate (the midpoint
//! of the bucket holding the value of that rank, clamped to the observed
//! minimum and maximum) is within 0.78% of the exact quantile, for values
//! below 256 TiB.
//!
//! **Memory.** [`BUCKETS`] counters of 8 bytes plus sum, min and max:
//! [`SKETCH_BYTES`] (22,056 bytes) per distribution, whatever the number of
//! values. Pages of a static table are only resident once touched: a
//! distribution whose values span a few powers of two touches a few pages.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Values up to this have a bucket each.
const EXACT: u64 = 128;
/// Buckets per power of two above [`EXACT`] (`2^SUB_BITS`).
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two from `(2^7, 2^8]` up to `(2^(TOP-1), 2^TOP]` are cut in
/// [`SUB`] buckets; values above `2^TOP` share the last bucket.
const TOP: u32 = 48;
/// Buckets before the first cut power of two: one per value `0..=EXACT`.
const FIRST: usize = EXACT as usize + 1;

/// Buckets per distribution: 129 exact (0 to 128), 64 per power of two from
/// `(2^7, 2^8]` to `(2^47, 2^48]`, and one above `2^48`.
pub const BUCKETS: usize = FIRST + (TOP as usize - 7) * SUB + 1;

/// Bytes of one recorded distribution: its bucket counters and its sum,
/// minimum and maximum (22,056; the count of values is its owner's: a name's
/// aggregate counts its closed scopes once for both of its distributions).
pub const SKETCH_BYTES: usize = std::mem::size_of::<AtomicSketch>();

/// The bucket of `v`. Buckets are closed above, `(low - 1, high]`, with
/// `high` a multiple of a power of two, so that no bucket straddles a power
/// of two (Prometheus's `le` bounds are exact on them).
#[inline]
fn index(v: u64) -> usize {
    if v <= EXACT {
        return v as usize;
    }
    let u = v - 1;
    let k = 63 - u.leading_zeros(); // 7..=63
    if k >= TOP {
        return BUCKETS - 1;
    }
    let m = (u >> (k - SUB_BITS)) as usize; // SUB..2 * SUB
    FIRST + (k as usize - 7) * SUB + (m - SUB)
}

/// The lowest and highest value (both inclusive) of bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    if i < FIRST {
        return (i as u64, i as u64);
    }
    if i >= BUCKETS - 1 {
        return ((1 << TOP) + 1, u64::MAX);
    }
    let j = i - FIRST;
    let k = 7 + (j / SUB) as u32;
    let m = (SUB + j % SUB) as u64;
    let shift = k - SUB_BITS;
    ((m << shift) + 1, (m + 1) << shift)
}

/// One non-empty bucket of a [`PeakSummary`]: `count` values in
/// `low..=high`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// The lowest value the bucket holds.
    pub low: u64,
    /// The highest value it holds.
    pub high: u64,
    /// Values recorded in it.
    pub count: u64,
}

/// The distribution of one figure (bytes) over the closed scopes of a name:
/// exact count, sum, minimum and maximum, and log-linear buckets whose
/// [`quantile`](Self::quantile) is within 1% of the exact value. Mergeable
/// ([`merge`](Self::merge)).
///
/// Buckets (HdrHistogram's layout): values up to 128 have one each; above,
/// each range `(2^k, 2^(k+1)]` is cut into 64 equal buckets, up to 256 TiB;
/// values above share one last bucket. A bucket is at most 1/64 of its
/// lowest value wide, so its midpoint is within 1/128 (0.78%) of any value in
/// it. Recorded in the registry, a distribution takes [`SKETCH_BYTES`]
/// (22,056 bytes: [`SKETCH_BUCKETS`](crate::SKETCH_BUCKETS) counters and
/// sum, min, max; the count is the name's count of closed scopes), whatever
/// the number of values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeakSummary {
    /// Values recorded.
    pub count: u64,
    /// Their sum (saturating).
    pub sum: u64,
    /// The largest (0 when none).
    pub max: u64,
    /// The smallest (0 when none).
    pub min: u64,
    /// The non-empty buckets, lowest first. Counts are per bucket, not
    /// cumulative. Up to 128 a bucket holds one value; above, a bucket's
    /// width is at most 1/64 of its `low` and its `high` is a multiple of a
    /// power of two (so no bucket straddles one); the last bucket holds every
    /// value above 256 TiB.
    pub buckets: Vec<Bucket>,
}

impl PeakSummary {
    /// The `q`-quantile (`0.0..=1.0`): an estimate of the value of rank
    /// `ceil(q * count)` in sorted order, within 1% of it (0.78% at most,
    /// for values below 256 TiB), never below the minimum nor above the
    /// maximum, exact at `q = 1.0` (the maximum). 0 when nothing was
    /// recorded. NaN is read as 1.0.
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().map(|b| b.count).sum();
        if self.count == 0 || total == 0 {
            return 0;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut below = 0u64;
        for b in &self.buckets {
            below += b.count;
            if below >= rank {
                let mid = b.low + (b.high - b.low) / 2;
                return mid.clamp(self.min, self.max.max(self.min));
            }
        }
        self.max
    }

    /// The mean, 0 when nothing was recorded.
    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }

    /// Records `v` (for distributions built outside the registry).
    pub fn add(&mut self, v: u64) {
        self.min = if self.count == 0 { v } else { self.min.min(v) };
        self.max = self.max.max(v);
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        let (low, high) = bounds(index(v));
        match self.buckets.binary_search_by_key(&low, |b| b.low) {
            Ok(i) => self.buckets[i].count += 1,
            Err(i) => self.buckets.insert(
                i,
                Bucket {
                    low,
                    high,
                    count: 1,
                },
            ),
        }
    }

    /// Adds `other`'s values to these: the result is the distribution of
    /// both, as if every value had been recorded here.
    pub fn merge(&mut self, other: &PeakSummary) {
        if other.count == 0 {
            return;
        }
        self.min = if self.count == 0 {
            other.min
        } else {
            self.min.min(other.min)
        };
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        for b in &other.buckets {
            match self.buckets.binary_search_by_key(&b.low, |x| x.low) {
                Ok(i) => self.buckets[i].count += b.count,
                Err(i) => self.buckets.insert(i, *b),
            }
        }
    }
}

/// A distribution recorded from any thread into fixed atomics: no lock, no
/// allocation, so a scope can close anywhere (a lock held by another thread
/// at `fork` would hang the child at its first scope close).
pub(crate) struct AtomicSketch {
    sum: AtomicU64,
    max: AtomicU64,
    /// `!min` (0 while empty): every field starts at zero, so a static table
    /// of sketches lies in `.bss` (pages resident once touched), not in the
    /// executable's `.data`.
    min_not: AtomicU64,
    /// Values per bucket; bucket 0's stays 0 (zeros are derived from the
    /// count, see [`AtomicSketch::add`]).
    buckets: [AtomicU64; BUCKETS],
}

impl AtomicSketch {
    pub(crate) const fn new() -> AtomicSketch {
        AtomicSketch {
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
            min_not: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    /// Records `v`. The count of values is its owner's (a name's aggregate
    /// counts its closed scopes once for both of its sketches), given back to
    /// [`AtomicSketch::summary`]. A zero writes nothing: the zeros are the
    /// values the count has beyond the other buckets (most scopes never
    /// touch device memory, and an empty scope's host peak is 0), so they
    /// cost a test. The sum, maximum and minimum are read-modify-written
    /// only when `v` changes them (both extremes only ever move outwards, so
    /// a value that does not pass the one read could not have changed them
    /// later either), so a value inside the seen range costs one atomic add:
    /// its bucket.
    #[inline(always)]
    pub(crate) fn add(&self, v: u64) {
        if v == 0 {
            return;
        }
        self.sum.fetch_add(v, Relaxed);
        if v > self.max.load(Relaxed) {
            self.max.fetch_max(v, Relaxed);
        }
        if !v > self.min_not.load(Relaxed) {
            self.min_not.fetch_max(!v, Relaxed);
        }
        // `index` is below BUCKETS for every u64 (tested); `get` keeps a
        // panic off the scope-close path regardless
        if let Some(b) = self.buckets.get(index(v)) {
            b.fetch_add(1, Relaxed);
        }
    }

    /// What was recorded so far, `count` values: those not in a bucket
    /// above 0 are the zeros. Values recorded while this reads may be
    /// counted in some figures and not yet in others (the owner counts a
    /// value after recording it, so a value in flight is never read as a
    /// zero it is not).
    pub(crate) fn summary(&self, count: u64) -> PeakSummary {
        let mut buckets: Vec<Bucket> = self
            .buckets
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(i, n)| {
                let count = n.load(Relaxed);
                let (low, high) = bounds(i);
                (count != 0).then_some(Bucket { low, high, count })
            })
            .collect();
        let zeros = count.saturating_sub(buckets.iter().map(|b| b.count).sum());
        if zeros != 0 {
            buckets.insert(
                0,
                Bucket {
                    low: 0,
                    high: 0,
                    count: zeros,
                },
            );
        }
        let max = self.max.load(Relaxed);
        PeakSummary {
            count,
            sum: self.sum.load(Relaxed),
            max,
            // a value being recorded may have raised `max` and not yet `min`
            min: if count == 0 || zeros != 0 {
                0
            } else {
                (!self.min_not.load(Relaxed)).min(max)
            },
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_values_and_are_narrow() {
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (low, high) = bounds(i);
            assert_eq!(low, next, "bucket {i} starts where {} ends", i.max(1) - 1);
            assert!(low <= high);
            assert_eq!(index(low), i);
            assert_eq!(index(high), i);
            if i < BUCKETS - 1 {
                // width at most 1/64 of the lowest value: midpoint within 1/128
                assert!(
                    low <= EXACT || (high - low + 1) * 64 <= low,
                    "{i}: {low}..={high}"
                );
                // no power of two inside but at the top: `le` bounds stay exact
                assert!(low.next_power_of_two() >= high, "{i}: {low}..={high}");
                next = high + 1;
            } else {
                assert_eq!(high, u64::MAX);
            }
        }
        assert_eq!(SKETCH_BYTES, 22_056);
    }

    #[test]
    fn merge_equals_recording_both() {
        let (mut a, mut b, mut both) = (
            PeakSummary::default(),
            PeakSummary::default(),
            PeakSummary::default(),
        );
        for v in [5u64, 1000, 1 << 20, 3 << 30, 77] {
            a.add(v);
            both.add(v);
        }
        for v in [6u64, 999, 1 << 21, 1 << 50] {
            b.add(v);
            both.add(v);
        }
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m, both);
        let mut e = PeakSummary::default();
        e.merge(&a);
        assert_eq!(e, a, "merging into an empty one copies");
        a.merge(&PeakSummary::default());
        assert_eq!(e, a, "merging an empty one changes nothing");
    }

    #[test]
    fn atomic_and_plain_agree() {
        let s = AtomicSketch::new();
        let mut p = PeakSummary::default();
        assert_eq!(s.summary(0), p);
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            1 << 47,
            (1 << 48) - 1,
            1 << 48,
            (1 << 48) + 1,
            u64::MAX,
        ] {
            s.add(v);
            p.add(v);
        }
        let a = s.summary(p.count);
        assert_eq!(
            (a.count, a.max, a.min, &a.buckets),
            (p.count, p.max, p.min, &p.buckets)
        );
    }
}
