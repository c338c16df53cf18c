//! The scope figures the metrics and the dashboard read, in one place: the
//! per-name aggregates of closed scopes (`alloc_host::aggregates`), the live
//! scopes summed by name, and the registry's occupancy.

use std::collections::{BTreeMap, HashMap};

use alloc_host::{MAX_NAMES, OTHER, PeakSummary, ScopeNode, ScopeTree};
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

/// The memory the scopes of one name hold now (open scopes, and closed ones
/// that still own memory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiveFigures {
    /// The scope name ([`OTHER`] for names past the bound).
    pub name: String,
    /// Host bytes live, nested scopes included.
    pub live_bytes: u64,
    /// Device bytes live, nested scopes included.
    pub device_live_bytes: u64,
}

/// The live scopes of `tree` by name, for every name of `closed` too (zero
/// where none of that name is live), sorted by name. A scope nested in one of
/// the same name is counted by its outer one. Names stay bounded: a live name
/// that no closed scope has yet keeps its own entry while there are fewer
/// than [`MAX_NAMES`]; past that it is counted under [`OTHER`].
pub fn live_by_name(tree: &ScopeTree, closed: &[NameFigures]) -> Vec<LiveFigures> {
    let mut by_name: BTreeMap<&str, LiveFigures> = closed
        .iter()
        .map(|n| {
            let f = LiveFigures {
                name: n.name.clone(),
                ..LiveFigures::default()
            };
            (n.name.as_str(), f)
        })
        .collect();
    let nodes: HashMap<u64, &ScopeNode> = tree.scopes.iter().map(|n| (n.stats.id, n)).collect();
    let outermost = |n: &ScopeNode| {
        let mut up = n.parent;
        while let Some(p) = up.and_then(|id| nodes.get(&id)) {
            if p.stats.name == n.stats.name {
                return false;
            }
            up = p.parent;
        }
        true
    };
    for n in tree.scopes.iter().filter(|n| outermost(n)) {
        let name = if by_name.contains_key(n.stats.name.as_str()) || by_name.len() < MAX_NAMES {
            n.stats.name.as_str()
        } else {
            OTHER
        };
        let f = by_name.entry(name).or_insert_with(|| LiveFigures {
            name: name.to_owned(),
            ..LiveFigures::default()
        });
        f.live_bytes += n.stats.live_bytes;
        f.device_live_bytes += n.stats.device.live_bytes;
    }
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use alloc_host::ScopeStats;

    use super::*;

    fn node(id: u64, parent: Option<u64>, name: &str, live: u64) -> ScopeNode {
        ScopeNode {
            stats: ScopeStats {
                id,
                name: name.to_owned(),
                live_bytes: live,
                ..ScopeStats::default()
            },
            parent,
        }
    }

    #[test]
    fn live_scopes_sum_by_name_without_counting_nested_ones_twice() {
        let tree = ScopeTree {
            scopes: vec![
                node(0, None, "process", 1000),
                node(1, Some(0), "request", 300),
                node(2, Some(1), "request", 100), // inside the one above
                node(3, Some(0), "request", 50),
            ],
            scopes_not_created: 0,
            capacity: 16,
        };
        let closed = [NameFigures {
            name: "batch".into(),
            closed: 1,
            ..NameFigures::default()
        }];
        let live = live_by_name(&tree, &closed);
        let names: Vec<_> = live
            .iter()
            .map(|l| (l.name.as_str(), l.live_bytes))
            .collect();
        assert_eq!(names, [("batch", 0), ("process", 1000), ("request", 350)]);
    }
}
