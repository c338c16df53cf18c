//! The device columns: one table, [`DEVICE_COLUMNS`], that every output
//! reads — the Prometheus families of [`Metrics`](crate::Metrics), the
//! device objects of the JSON exports, the device table of the
//! [`render_html`](crate::render_html) page and of the
//! [`render_memory_report`](crate::render_memory_report) text. A new device
//! figure is a field of [`DeviceInfo`] and one row here.

use alloc_host::format_bytes;
use serde::Serialize;

use crate::device::DeviceInfo;

/// What a column's number measures, which decides how it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes: `format_bytes` in the page and the report.
    Bytes,
    /// A ratio in `[0, 1]`: three decimals.
    Ratio,
    /// A count of events.
    Count,
}

/// The Prometheus type of a column's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A running total (exported with the `_total` suffix).
    Counter,
}

/// One reading of a column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// An integer (bytes, counts).
    Int(u64),
    /// A fraction.
    Float(f64),
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Value::Int(v) => s.serialize_u64(v),
            Value::Float(v) => s.serialize_f64(v),
        }
    }
}

/// One device figure, with everything each output needs to show it.
#[derive(Clone, Copy, Debug)]
pub struct DeviceColumn {
    /// The JSON key (the [`DeviceInfo`] field it reads).
    pub key: &'static str,
    /// The column title in the page and the report.
    pub title: &'static str,
    /// The Prometheus family (a counter without its `_total` suffix).
    pub metric: &'static str,
    /// The Prometheus help text.
    pub help: &'static str,
    /// The Prometheus type.
    pub kind: Kind,
    /// How the number reads.
    pub unit: Unit,
    /// The figure of a device; `None` where the device does not know it (no
    /// Prometheus sample, `null` in JSON, `-` in the page and the report).
    pub get: fn(&DeviceInfo) -> Option<Value>,
}

impl DeviceColumn {
    /// The figure of `d` as the page and the report write it (`-` when
    /// unknown).
    pub fn text(&self, d: &DeviceInfo) -> String {
        match ((self.get)(d), self.unit) {
            (None, _) => "-".to_owned(),
            (Some(Value::Int(v)), Unit::Bytes) => format_bytes(v),
            (Some(Value::Float(v)), Unit::Bytes) => format_bytes(v.max(0.0) as u64),
            (Some(Value::Int(v)), Unit::Ratio) => format!("{:.3}", v as f64),
            (Some(Value::Float(v)), Unit::Ratio) => format!("{v:.3}"),
            (Some(Value::Int(v)), Unit::Count) => v.to_string(),
            (Some(Value::Float(v)), Unit::Count) => format!("{v}"),
        }
    }
}

const fn int(v: u64) -> Option<Value> {
    Some(Value::Int(v))
}

/// Every device figure, in the order the page and the report show them.
pub const DEVICE_COLUMNS: &[DeviceColumn] = &[
    DeviceColumn {
        key: "allocated",
        title: "allocated",
        metric: "alloc_device_allocated_bytes",
        help: "Bytes handed out to users.",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        get: |d| int(d.allocated),
    },
    DeviceColumn {
        key: "peak_allocated",
        title: "peak alloc",
        metric: "alloc_device_peak_allocated_bytes",
        help: "Highest allocated bytes.",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        get: |d| int(d.peak_allocated),
    },
    DeviceColumn {
        key: "reserved",
        title: "reserved",
        metric: "alloc_device_reserved_bytes",
        help: "Bytes the caching engine holds from the device.",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        get: |d| int(d.reserved),
    },
    DeviceColumn {
        key: "peak_reserved",
        title: "peak reserved",
        metric: "alloc_device_peak_reserved_bytes",
        help: "Highest reserved bytes.",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        get: |d| int(d.peak_reserved),
    },
    DeviceColumn {
        key: "cached",
        title: "cached",
        metric: "alloc_device_cached_bytes",
        help: "Reserved minus allocated bytes.",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        get: |d| int(d.cached),
    },
    DeviceColumn {
        key: "limit",
        title: "cap",
        metric: "alloc_device_limit_bytes",
        help: "The engine's cap on reserved bytes.",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        get: |d| d.limit.map(Value::Int),
    },
    DeviceColumn {
        key: "free",
        title: "free",
        metric: "alloc_device_free_bytes",
        help: "Bytes the device reports free (all users).",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        get: |d| d.free.map(Value::Int),
    },
    DeviceColumn {
        key: "total",
        title: "total",
        metric: "alloc_device_total_bytes",
        help: "Bytes the device has.",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        get: |d| d.total.map(Value::Int),
    },
    DeviceColumn {
        key: "efficiency",
        title: "efficiency",
        metric: "alloc_device_efficiency_ratio",
        help: "Peak requested over peak reserved bytes.",
        kind: Kind::Gauge,
        unit: Unit::Ratio,
        get: |d| Some(Value::Float(d.efficiency)),
    },
    DeviceColumn {
        key: "num_ooms",
        title: "OOMs",
        metric: "alloc_device_ooms",
        help: "Allocations that failed with out of memory.",
        kind: Kind::Counter,
        unit: Unit::Count,
        get: |d| int(d.num_ooms),
    },
    DeviceColumn {
        key: "num_alloc_retries",
        title: "retries",
        metric: "alloc_device_alloc_retries",
        help: "Allocations that released the cache and retried.",
        kind: Kind::Counter,
        unit: Unit::Count,
        get: |d| int(d.num_alloc_retries),
    },
];

/// A device's label in the page and the report: `name (backend)`.
pub fn device_label(d: &DeviceInfo) -> String {
    format!("{} ({})", d.name, d.backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_titles_and_metrics_are_unique() {
        for (i, a) in DEVICE_COLUMNS.iter().enumerate() {
            for b in &DEVICE_COLUMNS[i + 1..] {
                assert_ne!(a.key, b.key);
                assert_ne!(a.title, b.title);
                assert_ne!(a.metric, b.metric);
            }
            assert!(a.metric.starts_with("alloc_device_"), "{}", a.metric);
            assert!(
                !a.metric.ends_with("_total"),
                "{}: the encoder adds it",
                a.metric
            );
        }
    }
}
