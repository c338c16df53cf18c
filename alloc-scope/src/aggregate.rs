//! Figures per scope *name* that survive the scopes: how many closed, their
//! totals, and the distribution of their host and device peaks ("p99 request
//! peak" in one call). Recorded when a scope closes (its last handle or guard
//! drops), outside any allocator path.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::*};
use std::time::Duration;

use serde::Serialize;

use super::clock::Rate;
use super::record::{NAME_MAX, Name, NameWords, Record, name_words};
use super::registry::REGISTRY;
use super::sketch::AtomicSketch;
pub use super::sketch::{Bucket, PeakSummary};
use super::thread::{self, Part};

/// Distinct names kept (names are cut at 63 bytes, as scope names are); scopes
/// with further names are aggregated under [`OTHER`]. Name request scopes with a fixed name ("request") and keep ids
/// elsewhere, so the table stays small whatever the number of requests.
pub const MAX_NAMES: usize = 1024;
/// The name under which scopes past [`MAX_NAMES`] distinct names aggregate.
pub const OTHER: &str = "other";

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

/// One name's accumulators: a fixed record of atomics, so that closing a
/// scope takes no lock (a lock held by another thread at `fork` would hang the
/// child at its first scope close) and allocates nothing.
pub(crate) struct Entry {
    /// 0 free, 1 being claimed, 2 ready.
    state: AtomicU8,
    hash: AtomicU64,
    name: Name,
    closed: AtomicU64,
    bytes_allocated: AtomicU64,
    allocations: AtomicU64,
    device_bytes_allocated: AtomicU64,
    /// Their wall times summed, in scope clock ticks (`clock.rs`).
    wall_ticks: AtomicU64,
    host: AtomicSketch,
    device: AtomicSketch,
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
            wall_ticks: AtomicU64::new(0),
            host: AtomicSketch::new(),
            device: AtomicSketch::new(),
        }
    }

    /// Adds one closed scope: its values first, then its count once for
    /// both distributions (released: a reader that acquires the count sees
    /// the values of every scope it counts, so no value in flight reads as
    /// a zero), and a total only when the scope changed it (most scopes
    /// never touch device memory).
    #[inline(always)]
    fn add(&self, f: &Closed) {
        self.host.add(f.host_peak);
        self.device.add(f.device_peak);
        add_nonzero(&self.bytes_allocated, f.bytes_allocated);
        add_nonzero(&self.allocations, f.allocations);
        add_nonzero(&self.device_bytes_allocated, f.device_bytes_allocated);
        add_nonzero(&self.wall_ticks, f.wall_ticks);
        self.closed.fetch_add(1, Release);
    }

    fn read(&self, name: String, rate: Rate) -> ScopeAggregate {
        let closed = self.closed.load(Acquire);
        ScopeAggregate {
            name,
            closed,
            host_peak: self.host.summary(closed),
            device_peak: self.device.summary(closed),
            bytes_allocated: self.bytes_allocated.load(Relaxed),
            allocations: self.allocations.load(Relaxed),
            device_bytes_allocated: self.device_bytes_allocated.load(Relaxed),
            wall_time: Duration::from_nanos(rate.ns(self.wall_ticks.load(Relaxed))),
        }
    }
}

#[inline]
fn add_nonzero(a: &AtomicU64, v: u64) {
    if v != 0 {
        a.fetch_add(v, Relaxed);
    }
}

/// Open addressing over [`MAX_NAMES`] entries; [`OTHER_ENTRY`] when full.
static TABLE: [Entry; MAX_NAMES] = [const { Entry::new() }; MAX_NAMES];
static OTHER_ENTRY: Entry = Entry::new();

/// A hash of a name in its stored form, word by word (never 0).
fn hash_words(words: &NameWords) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &w in words {
        h = (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    }
    h | 1
}

/// The entry of the name stored as `words`, claimed if new; the overflow
/// entry when the table is full. Names are compared in their stored form,
/// eight words, so closing a scope neither copies nor validates its name.
fn entry_of(words: &NameWords) -> &'static Entry {
    let h = hash_words(words);
    let start = (h as usize) % MAX_NAMES;
    for i in 0..MAX_NAMES {
        let e = &TABLE[(start + i) % MAX_NAMES];
        loop {
            match e.state.load(Acquire) {
                2 => {
                    if e.hash.load(Relaxed) == h && e.name.words() == *words {
                        return e;
                    }
                    break;
                }
                1 => core::hint::spin_loop(),
                _ => {
                    if e.state.compare_exchange(0, 1, AcqRel, Acquire).is_ok() {
                        e.name.store_words(words);
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

/// The index of a table entry (`None` for the overflow entry).
fn index_of(e: &'static Entry) -> Option<usize> {
    let i = (e as *const Entry as usize).wrapping_sub(TABLE.as_ptr() as usize)
        / core::mem::size_of::<Entry>();
    TABLE.get(i).filter(|t| core::ptr::eq(*t, e)).map(|_| i)
}

/// What a closing scope adds to its name's entry.
struct Closed {
    host_peak: u64,
    device_peak: u64,
    bytes_allocated: u64,
    allocations: u64,
    device_bytes_allocated: u64,
    wall_ticks: u64,
}

/// Records a scope that just closed (called with its life reference held;
/// its close time stored).
pub(crate) fn record_close(slot: u32) {
    let Some(r) = REGISTRY.record(slot) else {
        return;
    };
    let end = r.meta.0.closed_at.load(Relaxed);
    add_closed(r, &Part::default(), end);
}

/// Adds the figures of `r`'s scope, closed at `end` with `part` not
/// applied to its record ([`closed_of`]), to its name's aggregate (the
/// caller keeps the record from being reused meanwhile); returns its host
/// peak as a counter holds it. No allocation and no lock: a name not
/// cached in the record yet is looked up in its stored form.
#[inline(always)]
pub(crate) fn add_closed(r: &Record, part: &Part, end: u64) -> i64 {
    let m = &r.meta.0;
    let cached = m.aggregate.load(Relaxed) as usize;
    match cached.checked_sub(1).and_then(|i| TABLE.get(i)) {
        Some(e) if m.failed.load(Relaxed) == 0 => {
            let (f, host_peak) = closed_of(r, part, end);
            e.add(&f);
            host_peak
        }
        // The figures are read again there: none is kept in memory for it.
        _ => record_uncached(r, part, end),
    }
}

/// The name's entry cached in `r` ([`Meta::aggregate`]) when `r`'s scope
/// is not marked failed: [`add_closed`] adds to it without a lookup.
///
/// [`Meta::aggregate`]: crate::record::Meta::aggregate
#[inline(always)]
pub(crate) fn cached_entry(r: &Record) -> Option<&'static Entry> {
    let m = &r.meta.0;
    let cached = m.aggregate.load(Relaxed) as usize;
    let e = TABLE.get(cached.wrapping_sub(1))?;
    (m.failed.load(Relaxed) == 0).then_some(e)
}

/// [`add_closed`] to `e`, the entry [`cached_entry`] returned for `r`.
#[inline(always)]
pub(crate) fn add_closed_to(e: &Entry, r: &Record, part: &Part, end: u64) -> i64 {
    let (f, host_peak) = closed_of(r, part, end);
    e.add(&f);
    host_peak
}

/// What a scope closed at `end` (a scope clock reading) adds to its name's entry, with `part`,
/// operations of its own not applied to its record (the closing thread's,
/// [`thread::exit`]), counted as applying them would count them (the peak
/// rises to the live bytes before them plus their high-water mark); and its
/// host peak as a counter holds it. Only the figures an aggregate keeps are
/// read.
#[inline(always)]
fn closed_of(r: &Record, part: &Part, end: u64) -> (Closed, i64) {
    let (h, d, m) = (&r.host.0, &r.device.0, &r.meta.0);
    let mut host_peak = h.peak_bytes.load(Relaxed);
    if part.max_prefix > 0 {
        let live = h.live_bytes.load(Relaxed);
        host_peak = host_peak.max(live.wrapping_add(part.max_prefix));
    }
    let closed = Closed {
        host_peak: host_peak.max(0) as u64,
        device_peak: d.peak_bytes.load(Relaxed).max(0) as u64,
        bytes_allocated: h
            .bytes_allocated
            .load(Relaxed)
            .wrapping_add(part.bytes_allocated),
        allocations: h.allocations.load(Relaxed).wrapping_add(part.allocations),
        device_bytes_allocated: d.bytes_allocated.load(Relaxed),
        wall_ticks: end.saturating_sub(m.opened_at.load(Relaxed)),
    };
    (closed, host_peak)
}

/// [`add_closed`] of a scope marked failed (under `"{name} (failed)"`),
/// or of a record whose name's entry is not cached yet.
#[cold]
#[inline(never)]
fn record_uncached(r: &Record, part: &Part, end: u64) -> i64 {
    let (f, host_peak) = closed_of(r, part, end);
    if r.meta.0.failed.load(Relaxed) != 0 {
        r.name.0.with_str(|name| {
            let mut buf = [0u8; NAME_MAX];
            entry_of(&name_words(failed_name(name, &mut buf))).add(&f)
        });
        return host_peak;
    }
    let e = entry_of(&r.name.0.words());
    if let Some(i) = index_of(e) {
        r.meta.0.aggregate.store(i as u32 + 1, Relaxed);
    }
    e.add(&f);
    host_peak
}

/// The suffix of the aggregate name of a scope marked failed.
pub const FAILED_SUFFIX: &str = " (failed)";

/// `"{name} (failed)"` in `buf`, the name cut (at a character boundary) so
/// that the whole fits in [`NAME_MAX`] bytes and the suffix is never lost.
fn failed_name<'a>(name: &str, buf: &'a mut [u8; NAME_MAX]) -> &'a str {
    let mut end = name.len().min(NAME_MAX - FAILED_SUFFIX.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let len = end + FAILED_SUFFIX.len();
    buf[..end].copy_from_slice(&name.as_bytes()[..end]);
    buf[end..len].copy_from_slice(FAILED_SUFFIX.as_bytes());
    core::str::from_utf8(&buf[..len]).unwrap_or(FAILED_SUFFIX)
}

/// The aggregates of every scope name seen closing, sorted by name.
pub fn aggregates() -> Vec<ScopeAggregate> {
    thread::untracked(|| {
        let rate = Rate::now();
        let mut v: Vec<ScopeAggregate> = TABLE
            .iter()
            .filter(|e| e.state.load(Acquire) == 2)
            .map(|e| e.read(e.name.load(), rate))
            .collect();
        if OTHER_ENTRY.closed.load(Relaxed) != 0 {
            v.push(OTHER_ENTRY.read(OTHER.to_owned(), rate));
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
        let h = AtomicSketch::new();
        for &v in values {
            h.add(v);
        }
        h.summary(values.len() as u64)
    }

    #[test]
    fn a_scope_marked_failed_is_aggregated_under_its_failed_name_only() {
        let name = "aggregate-outcome-test";
        for i in 0..5u64 {
            let g = crate::scope(name);
            let owner = crate::charge_device_alloc(1000 * (i + 1));
            crate::charge_device_free(owner, 1000 * (i + 1));
            if i >= 3 {
                g.mark_failed();
                g.mark_failed(); // idempotent
            }
            drop(g);
        }
        let ok = aggregate(name).expect("the succeeded scopes");
        assert_eq!(ok.closed, 3, "{ok:?}");
        assert_eq!(ok.device_peak.max, 3000, "{ok:?}");
        let failed = aggregate(&format!("{name}{FAILED_SUFFIX}")).expect("the failed scopes");
        assert_eq!(failed.closed, 2, "{failed:?}");
        assert_eq!(failed.device_peak.min, 4000, "{failed:?}");
        // A reused slot starts unmarked.
        drop(crate::scope(name));
        assert_eq!(aggregate(name).unwrap().closed, 4);
    }

    #[test]
    fn a_long_name_keeps_the_failed_suffix() {
        let long = "é".repeat(40); // 80 bytes, cut to 63 when stored
        let g = crate::scope(&long);
        g.mark_failed();
        drop(g);
        let names: Vec<String> = aggregates().into_iter().map(|a| a.name).collect();
        let got = names
            .iter()
            .find(|n| n.starts_with('é') && n.ends_with(FAILED_SUFFIX))
            .unwrap_or_else(|| panic!("no failed aggregate in {names:?}"));
        assert!(got.len() <= NAME_MAX, "{got} is {} bytes", got.len());
        assert_eq!(
            got.trim_end_matches(FAILED_SUFFIX).chars().count(),
            27,
            "{got}"
        );
    }

    /// Zeros (scopes that never touched a kind of memory: most device
    /// peaks, empty scopes' host peaks) are values like any other: counted
    /// in the lowest bucket, the minimum, and the quantiles.
    #[test]
    fn zeros_are_counted_in_the_buckets_the_minimum_and_the_quantiles() {
        let s = hist(&[0, 9, 0, 5, 0]);
        assert_eq!((s.count, s.sum, s.min, s.max), (5, 14, 0, 9), "{s:?}");
        assert_eq!(
            s.buckets
                .iter()
                .map(|b| (b.low, b.count))
                .collect::<Vec<_>>(),
            vec![(0, 3), (5, 1), (9, 1)],
            "{s:?}"
        );
        assert_eq!(s.quantile(0.6), 0);
        assert_eq!(s.quantile(0.8), 5);
        assert_eq!(s.quantile(1.0), 9);
        let s = hist(&[0, 0]);
        assert_eq!((s.count, s.min, s.max, s.quantile(0.5)), (2, 0, 0, 0));
        assert_eq!(s.buckets.len(), 1, "{s:?}");
        let s = hist(&[7, 3]);
        assert_eq!((s.min, s.max, s.buckets.len()), (3, 7, 2), "{s:?}");
        let s = hist(&[]);
        assert_eq!((s.count, s.min, s.max, s.buckets.len()), (0, 0, 0, 0));
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

/// Quantiles of the per-name distributions against exact ones (sorted values).
#[cfg(test)]
mod accuracy {
    use super::*;

    /// xorshift64*: deterministic, no dependency.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform in `0.0..1.0`.
        pub(crate) fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Uniform in `lo..=hi`.
        pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + (self.unit() * (hi - lo + 1) as f64) as u64
        }
    }

    /// The exact `q`-quantile: the value of rank `ceil(q n)` (at least 1).
    pub(crate) fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub(crate) const QS: [f64; 7] = [0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0];

    /// Named distributions: random, skewed (most within a few percent, a
    /// tail), log-uniform, constant, two clusters, small values.
    pub(crate) fn distributions() -> Vec<(&'static str, Vec<u64>)> {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let n = 20_000;
        let kib = 1u64 << 10;
        vec![
            (
                "uniform 1 B..10 MiB",
                (0..n).map(|_| r.range(1, 10 << 20)).collect(),
            ),
            (
                "skewed: 95% at 740 KiB ±3%, tail to 5 MiB",
                (0..n)
                    .map(|i| {
                        if i % 20 == 0 {
                            r.range(800 * kib, 5 << 20)
                        } else {
                            r.range(718 * kib, 762 * kib)
                        }
                    })
                    .collect(),
            ),
            (
                "log-uniform 1 B..1 TiB",
                (0..n).map(|_| 2f64.powf(r.unit() * 40.0) as u64).collect(),
            ),
            ("constant 777,777", vec![777_777; n]),
            (
                "two clusters: 1 KiB ±1% and 10 MiB ±1%",
                (0..n)
                    .map(|i| {
                        let c = if i % 3 == 0 { 10 << 20 } else { kib };
                        r.range(c - c / 100, c + c / 100)
                    })
                    .collect(),
            ),
            ("small 0..300", (0..n).map(|_| r.range(0, 300)).collect()),
        ]
    }

    #[test]
    fn quantiles_are_within_one_percent_of_exact_and_within_min_max() {
        let mut failures = Vec::new();
        for (what, mut values) in distributions() {
            let h = AtomicSketch::new();
            for &v in &values {
                h.add(v);
            }
            let s = h.summary(values.len() as u64);
            values.sort_unstable();
            let (min, max) = (values[0], values[values.len() - 1]);
            for q in QS {
                let (want, got) = (exact(&values, q), s.quantile(q));
                let err = (got as f64 - want as f64).abs() / (want as f64).max(1.0);
                if err > 0.01 || got > max || got < min {
                    failures.push(format!(
                        "{what}: q {q}: estimate {got}, exact {want} ({:+.2}%), range {min}..={max}",
                        100.0 * (got as f64 - want as f64) / (want as f64).max(1.0)
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
