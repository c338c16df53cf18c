//! The scope figures the metrics and the dashboard read, in one place: the
//! per-name aggregates of closed scopes (`alloc_host::aggregates`) and the
//! registry's occupancy.

use serde::Serialize;

/// A distribution of per-scope bytes: power-of-two buckets `(upper bound,
/// count in this bucket)`, count, sum and max.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Their sum.
    pub sum: u64,
    /// The largest.
    pub max: u64,
    /// Non-empty power-of-two buckets, counts not cumulative.
    pub buckets: Vec<(u64, u64)>,
}

impl Summary {
    /// The `q`-quantile (`0.0..=1.0`), interpolated inside its power-of-two
    /// bucket and never above the maximum: within a factor of 2 of the exact
    /// value, exact at `q = 1.0`; 0 when nothing was recorded.
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
                return ((lo as f64 + frac * (upper - lo) as f64) as u64).min(self.max);
            }
            below += n;
        }
        self.max
    }
}

/// The closed scopes of one name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NameFigures {
    /// The scope name.
    pub name: String,
    /// Scopes closed.
    pub closed: u64,
    /// Their host peaks.
    pub host_peak: Summary,
    /// Their device peaks.
    pub device_peak: Summary,
    /// Host bytes they allocated.
    pub bytes_allocated: u64,
    /// Host allocations they made.
    pub allocations: u64,
    /// Their wall time, seconds, summed.
    pub wall_seconds: f64,
}

/// Occupancy of the scope registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegistryFigures {
    /// Slots in all.
    pub capacity: u64,
    /// Slots in use.
    pub in_use: u64,
    /// Scopes not created because it was full.
    pub not_created: u64,
}

impl From<&alloc_host::PeakSummary> for Summary {
    fn from(p: &alloc_host::PeakSummary) -> Self {
        Summary {
            count: p.count,
            sum: p.sum,
            max: p.max,
            buckets: p.buckets.clone(),
        }
    }
}

/// The per-name aggregates now (`alloc_host::aggregates`).
pub fn name_figures() -> Vec<NameFigures> {
    alloc_host::aggregates()
        .iter()
        .map(|a| NameFigures {
            name: a.name.clone(),
            closed: a.closed,
            host_peak: (&a.host_peak).into(),
            device_peak: (&a.device_peak).into(),
            bytes_allocated: a.bytes_allocated,
            allocations: a.allocations,
            wall_seconds: a.wall_time.as_secs_f64(),
        })
        .collect()
}

/// The registry now (`alloc_host::registry_stats`).
pub fn registry_figures() -> RegistryFigures {
    let r = alloc_host::registry_stats();
    RegistryFigures {
        capacity: r.capacity as u64,
        in_use: r.in_use as u64,
        not_created: r.not_created,
    }
}
