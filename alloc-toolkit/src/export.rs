//! Exporters: host scopes and every registered device in the Prometheus text
//! exposition format and as JSON.

use std::fmt::Write as _;

use alloc_host::{ScopeNode, ScopeTree};
use serde::Serialize;

use crate::device::{DeviceInfo, device_infos};
use crate::info::{MemoryInfo, memory_info_untracked};

/// Escapes a Prometheus label value (`\`, `"`, newline).
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

type ScopeField = fn(&ScopeNode) -> u64;

const SCOPE_METRICS: [(&str, &str, &str, ScopeField); 6] = [
    (
        "alloc_scope_live_bytes",
        "gauge",
        "Host bytes live in the scope, children included.",
        |n| n.stats.live_bytes,
    ),
    (
        "alloc_scope_peak_bytes",
        "gauge",
        "Highest host live bytes of the scope.",
        |n| n.stats.peak_bytes,
    ),
    (
        "alloc_scope_allocations_total",
        "counter",
        "Host allocations made in the scope.",
        |n| n.stats.allocations,
    ),
    (
        "alloc_scope_allocated_bytes_total",
        "counter",
        "Host bytes allocated in the scope.",
        |n| n.stats.bytes_allocated,
    ),
    (
        "alloc_scope_device_live_bytes",
        "gauge",
        "Device bytes live in the scope, children included.",
        |n| n.stats.device.live_bytes,
    ),
    (
        "alloc_scope_device_peak_bytes",
        "gauge",
        "Highest device live bytes of the scope.",
        |n| n.stats.device.peak_bytes,
    ),
];

type DeviceField = fn(&DeviceInfo) -> Option<f64>;

const DEVICE_METRICS: [(&str, &str, &str, DeviceField); 10] = [
    (
        "alloc_device_free_bytes",
        "gauge",
        "Bytes the device reports free.",
        |d| d.free.map(|v| v as f64),
    ),
    (
        "alloc_device_total_bytes",
        "gauge",
        "Bytes the device has in all.",
        |d| d.total.map(|v| v as f64),
    ),
    (
        "alloc_device_limit_bytes",
        "gauge",
        "The caching engine's cap on reserved bytes.",
        |d| d.limit.map(|v| v as f64),
    ),
    (
        "alloc_device_reserved_bytes",
        "gauge",
        "Bytes the caching engine holds from the device.",
        |d| Some(d.reserved as f64),
    ),
    (
        "alloc_device_allocated_bytes",
        "gauge",
        "Bytes handed out to users.",
        |d| Some(d.allocated as f64),
    ),
    (
        "alloc_device_cached_bytes",
        "gauge",
        "Reserved minus allocated bytes.",
        |d| Some(d.cached as f64),
    ),
    (
        "alloc_device_peak_reserved_bytes",
        "gauge",
        "Highest reserved bytes.",
        |d| Some(d.peak_reserved as f64),
    ),
    (
        "alloc_device_peak_allocated_bytes",
        "gauge",
        "Highest allocated bytes.",
        |d| Some(d.peak_allocated as f64),
    ),
    (
        "alloc_device_efficiency_ratio",
        "gauge",
        "Peak requested over peak reserved bytes.",
        |d| Some(d.efficiency),
    ),
    (
        "alloc_device_ooms_total",
        "counter",
        "Allocations that failed with out of memory.",
        |d| Some(d.num_ooms as f64),
    ),
];

/// The scopes in `tree` and the `devices` in Prometheus text format.
pub fn prometheus_text(tree: &ScopeTree, devices: &[DeviceInfo]) -> String {
    let mut out = String::with_capacity(256 + tree.scopes.len() * 6 * 64 + devices.len() * 600);
    let mut labels: Vec<String> = Vec::with_capacity(tree.scopes.len());
    for n in &tree.scopes {
        let mut l = String::from("{scope=\"");
        escape(&n.stats.name, &mut l);
        let _ = write!(l, "\",id=\"{}\",depth=\"{}\"}}", n.stats.id, n.stats.depth);
        labels.push(l);
    }
    for (name, kind, help, f) in SCOPE_METRICS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (n, l) in tree.scopes.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{l} {}", f(n));
        }
    }
    for (name, kind, help, f) in DEVICE_METRICS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in devices {
            if let Some(v) = f(d) {
                out.push_str(name);
                out.push_str("{device=\"");
                escape(&d.name, &mut out);
                out.push_str("\",backend=\"");
                escape(&d.backend, &mut out);
                let _ = writeln!(out, "\"}} {v}");
            }
        }
    }
    out
}

/// Every scope and registered device now, in Prometheus text format.
pub fn prometheus() -> String {
    alloc_host::untracked(|| prometheus_text(&alloc_host::snapshot(), &device_infos()))
}

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
    alloc_host::untracked(|| json_text(&info, &alloc_host::snapshot()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_host::ScopeStats;

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
    fn prometheus_lines_parse_back() {
        let text = prometheus_text(&tree(3), &[dev()]);
        assert!(
            text.contains(
                "alloc_scope_live_bytes{scope=\"req \\\"2\\\"\\n\",id=\"2\",depth=\"1\"} 200\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("alloc_device_reserved_bytes{device=\"gpu0\",backend=\"sim\"} 2097152\n")
        );
        assert!(
            !text.contains("alloc_device_free_bytes{"),
            "unknown free is left out"
        );
        // every sample line is `name{labels} number`
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
        let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(families, SCOPE_METRICS.len() + DEVICE_METRICS.len());
    }

    #[test]
    fn json_round_trips() {
        let info = crate::info::memory_info();
        let v: serde_json::Value = serde_json::from_str(&json_text(&info, &tree(2))).unwrap();
        assert_eq!(v["scopes"]["scopes"][1]["stats"]["live_bytes"], 100);
        assert!(v["memory"]["system"]["total"].as_u64().unwrap() > 0);
    }
}
