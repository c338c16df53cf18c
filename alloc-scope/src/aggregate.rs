//! Figures per scope *name* that survive the scopes: how many closed, their
//! totals, and the distribution of their host and device peaks ("p99 request
//! peak" in one call). Recorded when a scope closes (its last handle or guard
//! drops), outside any allocator path.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::*};
use std::time::Duration;

use serde::Serialize;

use super::record::Name;
use super::registry::REGISTRY;
use super::thread;

/// Distinct names kept (names are cut at 63 bytes, as scope names are); scopes
/// with further names are aggregated under [`OTHER`]. Name request scopes with a fixed name ("request") and keep ids
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

/// Bucket of `v`: the smallest `i` with `v <= 2^i`.
fn bucket(v: u64) -> usize {
    (64 - v.saturating_sub(1).leading_zeros()) as usize
}

fn upper(i: usize) -> u64 {
    if i >= 64 { u64::MAX } else { 1u64 << i }
}

/// One name's accumulators: a fixed record of atomics, so that closing a
/// scope takes no lock (a lock held by another thread at `fork` would hang the
/// child at its first scope close) and allocates nothing.
struct Entry {
    /// 0 free, 1 being claimed, 2 ready.
    state: AtomicU8,
    hash: AtomicU64,
    name: Name,
    closed: AtomicU64,
    bytes_allocated: AtomicU64,
    allocations: AtomicU64,
    device_bytes_allocated: AtomicU64,
    wall_ns: AtomicU64,
    host: Hist,
    device: Hist,
}

struct Hist {
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Hist {
    const fn new() -> Hist {
        Hist {
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    fn add(&self, v: u64) {
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
        self.max.fetch_max(v, Relaxed);
        self.buckets[bucket(v)].fetch_add(1, Relaxed);
    }

    fn summary(&self) -> PeakSummary {
        PeakSummary {
            count: self.count.load(Relaxed),
            sum: self.sum.load(Relaxed),
            max: self.max.load(Relaxed),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| (upper(i), n.load(Relaxed)))
                .filter(|(_, n)| *n != 0)
                .collect(),
        }
    }
}

impl Entry {
    const fn new() -> Entry {
        Entry {
            state: AtomicU8::new(0),
            hash: AtomicU64::new(0),
            name: Name([const { AtomicU64::new(0) }; 8]),
            closed: AtomicU64::new(0),
            bytes_allocated: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
            device_bytes_allocated: AtomicU64::new(0),
            wall_ns: AtomicU64::new(0),
            host: Hist::new(),
            device: Hist::new(),
        }
    }

    fn add(&self, f: &Closed) {
        self.closed.fetch_add(1, Relaxed);
        self.host.add(f.host_peak);
        self.device.add(f.device_peak);
        self.bytes_allocated.fetch_add(f.bytes_allocated, Relaxed);
        self.allocations.fetch_add(f.allocations, Relaxed);
        self.device_bytes_allocated
            .fetch_add(f.device_bytes_allocated, Relaxed);
        self.wall_ns.fetch_add(f.wall_ns, Relaxed);
    }

    fn read(&self, name: String) -> ScopeAggregate {
        ScopeAggregate {
            name,
            closed: self.closed.load(Relaxed),
            host_peak: self.host.summary(),
            device_peak: self.device.summary(),
            bytes_allocated: self.bytes_allocated.load(Relaxed),
            allocations: self.allocations.load(Relaxed),
            device_bytes_allocated: self.device_bytes_allocated.load(Relaxed),
            wall_time: Duration::from_nanos(self.wall_ns.load(Relaxed)),
        }
    }
}

/// Open addressing over [`MAX_NAMES`] entries; [`OTHER_ENTRY`] when full.
static TABLE: [Entry; MAX_NAMES] = [const { Entry::new() }; MAX_NAMES];
static OTHER_ENTRY: Entry = Entry::new();

fn fnv(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

/// The entry of `name`, claimed if new; the overflow entry when the table is full.
fn entry_of(name: &str) -> &'static Entry {
    let h = fnv(name);
    let start = (h as usize) % MAX_NAMES;
    for i in 0..MAX_NAMES {
        let e = &TABLE[(start + i) % MAX_NAMES];
        loop {
            match e.state.load(Acquire) {
                2 => {
                    if e.hash.load(Relaxed) == h && e.name.with_str(|n| n == name) {
                        return e;
                    }
                    break;
                }
                1 => core::hint::spin_loop(),
                _ => {
                    if e.state.compare_exchange(0, 1, AcqRel, Acquire).is_ok() {
                        e.name.store(name);
                        e.hash.store(h, Relaxed);
                        e.state.store(2, Release);
                        return e;
                    }
                }
            }
        }
    }
    &OTHER_ENTRY
}

/// What a closing scope adds to its name's entry.
struct Closed {
    host_peak: u64,
    device_peak: u64,
    bytes_allocated: u64,
    allocations: u64,
    device_bytes_allocated: u64,
    wall_ns: u64,
}

/// Records a scope that just closed (called with its life reference held).
/// No allocation and no lock: the name is read into a stack buffer.
pub(crate) fn record_close(slot: u32) {
    let Some(r) = REGISTRY.record(slot) else {
        return;
    };
    let (h, d, m) = (r.host.0.read(), r.device.0.read(), &r.meta.0);
    let f = Closed {
        host_peak: h.peak_bytes.max(0) as u64,
        device_peak: d.peak_bytes.max(0) as u64,
        bytes_allocated: h.bytes_allocated,
        allocations: h.allocations,
        device_bytes_allocated: d.bytes_allocated,
        wall_ns: m
            .closed_ns
            .load(Relaxed)
            .saturating_sub(m.opened_ns.load(Relaxed)),
    };
    r.name.0.with_str(|name| entry_of(name).add(&f));
}

/// The aggregates of every scope name seen closing, sorted by name.
pub fn aggregates() -> Vec<ScopeAggregate> {
    thread::untracked(|| {
        let mut v: Vec<ScopeAggregate> = TABLE
            .iter()
            .filter(|e| e.state.load(Acquire) == 2)
            .map(|e| e.read(e.name.load()))
            .collect();
        if OTHER_ENTRY.closed.load(Relaxed) != 0 {
            v.push(OTHER_ENTRY.read(OTHER.to_owned()));
        }
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
        let h = Hist::new();
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
