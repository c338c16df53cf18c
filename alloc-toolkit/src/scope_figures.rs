//! The scope figures the metrics and the dashboard read, in one place: the
//! per-name aggregates of closed scopes (`alloc_host::aggregates`) and the
//! registry's occupancy.

use alloc_host::PeakSummary;
use serde::Serialize;

/// A distribution of per-scope bytes: alloc-host's [`PeakSummary`]
/// (power-of-two buckets, count, sum, max, `quantile`).
pub type Summary = PeakSummary;

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

/// The per-name aggregates now (`alloc_host::aggregates`).
pub fn name_figures() -> Vec<NameFigures> {
    alloc_host::aggregates()
        .iter()
        .map(|a| NameFigures {
            name: a.name.clone(),
            closed: a.closed,
            host_peak: a.host_peak.clone(),
            device_peak: a.device_peak.clone(),
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
