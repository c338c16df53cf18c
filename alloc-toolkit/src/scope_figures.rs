//! The scope figures the metrics and the dashboard read, in one place: the
//! per-name aggregates of closed scopes (`alloc_host::aggregates`), the live
//! scopes summed by name, and the registry's occupancy.

use std::collections::{BTreeMap, HashMap};

use alloc_host::{MAX_NAMES, OTHER, PeakSummary, ScopeNode, ScopeTree};
use serde::{Serialize, Serializer};

/// A distribution of per-scope bytes: alloc-host's [`PeakSummary`] (count,
/// sum, min, max, and log-linear buckets whose `quantile` is an estimate
/// within 1% of the exact value).
pub type Summary = PeakSummary;

/// How a [`Summary`] appears in JSON: its exact figures and its quantile
/// estimates, without the buckets (a few hundred per distribution; they
/// stay in [`Summary::buckets`] for whoever merges distributions).
#[derive(Serialize)]
struct SummaryJson {
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
    mean: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    /// How far the quantiles may be from the exact ones.
    quantiles: &'static str,
}

fn summary_json<S: Serializer>(s: &Summary, ser: S) -> Result<S::Ok, S::Error> {
    SummaryJson {
        count: s.count,
        sum: s.sum,
        min: s.min,
        max: s.max,
        mean: s.mean(),
        p50: s.quantile(0.5),
        p90: s.quantile(0.9),
        p99: s.quantile(0.99),
        p999: s.quantile(0.999),
        quantiles: QUANTILE_NOTE,
    }
    .serialize(ser)
}

/// What to print next to a quantile of a [`Summary`].
pub const QUANTILE_NOTE: &str = "estimate, ±1%";

/// The closed scopes of one name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NameFigures {
    /// The scope name.
    pub name: String,
    /// Scopes closed.
    pub closed: u64,
    /// Their host peaks (in JSON: count, sum, min, max, mean, p50, p90, p99,
    /// p999; the quantiles are estimates within 1%).
    #[serde(serialize_with = "summary_json")]
    pub host_peak: Summary,
    /// Their device peaks (in JSON as `host_peak`).
    #[serde(serialize_with = "summary_json")]
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

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn json_carries_the_quantiles_and_says_they_are_estimates_not_the_buckets() {
        let mut host_peak = Summary::default();
        for v in 1..=10_000u64 {
            host_peak.add(v * 1000);
        }
        let f = NameFigures {
            name: "request".into(),
            closed: 10_000,
            host_peak,
            ..NameFigures::default()
        };
        let v = serde_json::to_value(&f).unwrap();
        let h = &v["host_peak"];
        assert_eq!(h["count"], 10_000);
        assert_eq!(h["min"], 1000);
        assert_eq!(h["max"], 10_000_000);
        let p99 = h["p99"].as_u64().unwrap();
        assert!(p99.abs_diff(9_900_000) * 100 <= 9_900_000, "{p99}");
        assert_eq!(h["quantiles"], QUANTILE_NOTE);
        assert!(h.get("buckets").is_none(), "{h}");
        assert!(v.to_string().len() < 1000, "{v}");
    }
}
