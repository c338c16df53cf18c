//! Figures per scope *name* that survive the scopes: how many closed, their
//! totals, and the distribution of their host and device peaks ("p99 request
//! peak" in one call). Recorded when a scope closes (its last handle or guard
//! drops), outside any allocator path.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use super::stats::ScopeStats;
use super::thread;

/// Distinct names kept; scopes with further names are aggregated under
/// [`OTHER`]. Name request scopes with a fixed name ("request") and keep ids
/// elsewhere, so the table stays small whatever the number of requests.
pub const MAX_NAMES: usize = 1024;
/// The name under which scopes past [`MAX_NAMES`] distinct names aggregate.
pub const OTHER: &str = "other";

const BUCKETS: usize = 65;

/// The distribution of one figure (bytes) over the closed scopes of a name:
/// power-of-two buckets, exact count, sum and max.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeakSummary {
    /// Values recorded.
    pub count: u64,
    /// Their sum.
    pub sum: u64,
    /// The largest.
    pub max: u64,
    /// Non-empty buckets as `(upper bound, count)`: bucket `b` holds values in
    /// `(b / 2, b]` (the first, `1`, holds 0 and 1). Counts are per bucket, not
    /// cumulative.
    pub buckets: Vec<(u64, u64)>,
}

impl PeakSummary {
    /// The `q`-quantile (`0.0..=1.0`), interpolated linearly inside its
    /// power-of-two bucket and never above the true maximum: within a factor
    /// of 2 of the exact value, exact at `q = 1.0`. 0 when nothing was recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut below = 0u64;
        for &(upper, n) in &self.buckets {
            if below + n >= rank {
                let lo = if upper <= 1 { 0 } else { upper / 2 };
                let frac = (rank - below) as f64 / n as f64;
                let v = lo as f64 + frac * (upper - lo) as f64;
                return (v as u64).min(self.max);
            }
            below += n;
        }
        self.max
    }

    /// The mean, 0 when nothing was recorded.
    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }
}

/// Totals of the closed scopes that had one name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScopeAggregate {
    /// The scope name ([`OTHER`] for the overflow).
    pub name: String,
    /// Scopes of this name that closed.
    pub closed: u64,
    /// Their host peaks.
    pub host_peak: PeakSummary,
    /// Their device peaks.
    pub device_peak: PeakSummary,
    /// Host bytes they allocated in total.
    pub bytes_allocated: u64,
    /// Host allocations they made in total.
    pub allocations: u64,
    /// Device bytes they allocated in total.
    pub device_bytes_allocated: u64,
    /// Their wall time, summed.
    pub wall_time: Duration,
}

#[derive(Clone)]
struct Acc {
    closed: u64,
    host: Hist,
    device: Hist,
    bytes_allocated: u64,
    allocations: u64,
    device_bytes_allocated: u64,
    wall_ns: u128,
}

#[derive(Clone)]
struct Hist {
    count: u64,
    sum: u64,
    max: u64,
    buckets: [u64; BUCKETS],
}

impl Hist {
    const EMPTY: Hist = Hist {
        count: 0,
        sum: 0,
        max: 0,
        buckets: [0; BUCKETS],
    };

    fn add(&mut self, v: u64) {
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        self.max = self.max.max(v);
        self.buckets[bucket(v)] += 1;
    }

    fn summary(&self) -> PeakSummary {
        PeakSummary {
            count: self.count,
            sum: self.sum,
            max: self.max,
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n != 0)
                .map(|(i, n)| (upper(i), *n))
                .collect(),
        }
    }
}

/// Bucket of `v`: the smallest `i` with `v <= 2^i`.
fn bucket(v: u64) -> usize {
    (64 - v.saturating_sub(1).leading_zeros()) as usize
}

fn upper(i: usize) -> u64 {
    if i >= 64 { u64::MAX } else { 1u64 << i }
}

static TABLE: Mutex<Option<HashMap<String, Acc>>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<HashMap<String, Acc>>> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a scope that just closed (called with its life reference held).
pub(crate) fn record_close(slot: u32) {
    thread::untracked(|| {
        let s = ScopeStats::read(slot);
        add(&s);
    });
}

fn add(s: &ScopeStats) {
    let mut t = lock();
    let map = t.get_or_insert_with(HashMap::new);
    let key = if map.contains_key(&s.name) || map.len() < MAX_NAMES - 1 {
        s.name.as_str()
    } else {
        OTHER
    };
    let acc = match map.get_mut(key) {
        Some(a) => a,
        None => map.entry(key.to_owned()).or_insert(Acc {
            closed: 0,
            host: Hist::EMPTY,
            device: Hist::EMPTY,
            bytes_allocated: 0,
            allocations: 0,
            device_bytes_allocated: 0,
            wall_ns: 0,
        }),
    };
    acc.closed += 1;
    acc.host.add(s.peak_bytes);
    acc.device.add(s.device.peak_bytes);
    acc.bytes_allocated = acc.bytes_allocated.saturating_add(s.bytes_allocated);
    acc.allocations = acc.allocations.saturating_add(s.allocations);
    acc.device_bytes_allocated = acc
        .device_bytes_allocated
        .saturating_add(s.device.bytes_allocated);
    acc.wall_ns += s.wall_time.as_nanos();
}

/// The aggregates of every scope name seen closing, sorted by name.
pub fn aggregates() -> Vec<ScopeAggregate> {
    thread::untracked(|| {
        let t = lock();
        let mut v: Vec<ScopeAggregate> = t
            .iter()
            .flat_map(|m| m.iter())
            .map(|(name, a)| ScopeAggregate {
                name: name.clone(),
                closed: a.closed,
                host_peak: a.host.summary(),
                device_peak: a.device.summary(),
                bytes_allocated: a.bytes_allocated,
                allocations: a.allocations,
                device_bytes_allocated: a.device_bytes_allocated,
                wall_time: Duration::from_nanos(a.wall_ns.min(u64::MAX as u128) as u64),
            })
            .collect();
        drop(t);
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    })
}

/// The aggregate of one name, if a scope of that name has closed.
pub fn aggregate(name: &str) -> Option<ScopeAggregate> {
    aggregates().into_iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> PeakSummary {
        let mut h = Hist::EMPTY;
        for &v in values {
            h.add(v);
        }
        h.summary()
    }

    #[test]
    fn buckets_bound_each_value_from_above_within_a_factor_of_two() {
        for v in [0u64, 1, 2, 3, 4, 5, 1000, 1024, 1025, u64::MAX] {
            let b = upper(bucket(v));
            assert!(v <= b, "{v} above its bucket bound {b}");
            assert!(v == 0 || v == 1 || b / 2 < v, "{v} not above half of {b}");
        }
    }

    #[test]
    fn quantiles_are_within_a_factor_of_two_and_exact_at_the_max() {
        let values: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let s = hist(&values);
        assert_eq!(s.count, 1000);
        assert_eq!(s.max, 1_000_000);
        assert_eq!(s.quantile(1.0), 1_000_000);
        for q in [0.01, 0.5, 0.9, 0.99] {
            let exact = values[((q * 1000.0) as usize).max(1) - 1];
            let got = s.quantile(q);
            assert!(
                got * 2 >= exact && got <= exact * 2,
                "q {q}: got {got}, exact {exact}"
            );
        }
        assert_eq!(hist(&[]).quantile(0.5), 0);
    }
}
