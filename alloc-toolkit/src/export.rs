//! The JSON export: memory (system, container, process, tracked host, and
//! each device as the rows of [`DEVICE_COLUMNS`](crate::columns::DEVICE_COLUMNS))
//! and the live scope tree, in one document. The Prometheus text format has
//! one renderer, [`Metrics`](crate::Metrics) (and
//! [`prometheus`](crate::prometheus) for a one-off dump).

use alloc_host::ScopeTree;
use serde::Serialize;

use crate::info::{MemoryInfo, memory_info_untracked};

/// What [`json`] writes.
#[derive(Serialize)]
pub struct Export<'a> {
    /// System, container, process, tracked host and devices.
    pub memory: &'a MemoryInfo,
    /// The host scope tree.
    pub scopes: &'a ScopeTree,
}

/// `memory` and `tree` as one JSON document.
pub fn json_text(memory: &MemoryInfo, tree: &ScopeTree) -> String {
    // About 700 bytes per scope: size the buffer once.
    let mut out = Vec::with_capacity(4096 + tree.scopes.len() * 768);
    match serde_json::to_writer(
        &mut out,
        &Export {
            memory,
            scopes: tree,
        },
    ) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(e) => format!("{{\"error\":\"{e}\"}}"),
    }
}

/// [`memory_info`](crate::memory_info) and every scope now, as JSON.
pub fn json() -> String {
    let info = memory_info_untracked();
    alloc_host::untracked(|| json_text(&info, &alloc_host::scope_tree()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::DEVICE_COLUMNS;
    use crate::device::DeviceInfo;
    use alloc_host::{ScopeNode, ScopeStats};

    fn tree(n: usize) -> ScopeTree {
        let scopes = (0..n)
            .map(|i| ScopeNode {
                stats: ScopeStats {
                    id: i as u64,
                    name: format!("req \"{i}\"\n"),
                    live_bytes: 100 * i as u64,
                    depth: 1,
                    ..ScopeStats::default()
                },
                parent: Some(0),
            })
            .collect();
        ScopeTree {
            scopes,
            scopes_not_created: 0,
            capacity: 16384,
        }
    }

    fn dev() -> DeviceInfo {
        DeviceInfo {
            name: "gpu0".into(),
            backend: "sim".into(),
            free: None,
            total: Some(1 << 30),
            limit: None,
            reserved: 2 << 20,
            allocated: 1 << 20,
            peak_reserved: 2 << 20,
            peak_allocated: 1 << 20,
            cached: 1 << 20,
            efficiency: 0.5,
            num_ooms: 0,
            num_alloc_retries: 0,
        }
    }

    #[test]
    fn json_round_trips() {
        let info = crate::info::memory_info();
        let v: serde_json::Value = serde_json::from_str(&json_text(&info, &tree(2))).unwrap();
        assert_eq!(v["scopes"]["scopes"][1]["stats"]["live_bytes"], 100);
        assert!(v["memory"]["system"]["total"].as_u64().unwrap() > 0);
    }

    #[test]
    fn devices_are_written_by_the_column_table() {
        let mut info = crate::info::memory_info();
        info.devices = vec![dev()];
        let v: serde_json::Value = serde_json::from_str(&json_text(&info, &tree(1))).unwrap();
        let d = v["memory"]["devices"][0].as_object().unwrap();
        assert_eq!(d.len(), 2 + DEVICE_COLUMNS.len(), "{d:?}");
        assert_eq!(d["name"], "gpu0");
        assert_eq!(d["reserved"], 2 << 20);
        assert_eq!(d["efficiency"], 0.5);
        assert!(d["free"].is_null(), "unknown is null");
    }
}
