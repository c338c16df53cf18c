//! [`Metrics`] (feature `prometheus`): the memory figures for Prometheus, on
//! `prometheus-client`, read at scrape time by one collector.
//!
//! **Cardinality is bounded whatever the number of requests.** Scopes are
//! exported by *name*, never by instance (no `id` label): per name, the
//! bytes live now in its scopes, histograms of the host and device peaks of
//! the scopes that closed (so a request shorter than the scrape interval is
//! still counted), and totals. Scope names are bounded by
//! the registry (past its limit of distinct names, new names aggregate under
//! `other`), devices by registration. Name request scopes `request`, not
//! `request 17`.
//!
//! | family | labels | what |
//! |---|---|---|
//! | `alloc_scope_live_bytes`, `alloc_scope_device_live_bytes` | `scope` | gauges: bytes live now in the scopes of the name (open, or closed but owning memory) |
//! | `alloc_scope_host_peak_quantile_bytes`, `alloc_scope_device_peak_quantile_bytes` | `scope`, `quantile` (`0.5`, `0.9`, `0.99`, `0.999`, `1`) | gauges: quantiles of per-scope peaks at close over every scope of the name closed since the process started; estimates within 1% ([`PeakSummary`](alloc_host::PeakSummary)), `1` the exact maximum. What to quote and plot |
//! | `alloc_scope_host_peak_bytes`, `alloc_scope_device_peak_bytes` | `scope` | histograms of the same peaks with bounds 4x apart ([`PEAK_BUCKETS`]): for rates and heatmaps; `histogram_quantile` over them is off by up to 4x |
//! | `alloc_scope_closed_total`, `alloc_scope_allocated_bytes_total`, `alloc_scope_allocations_total`, `alloc_scope_wall_seconds_total` | `scope` | totals of closed scopes |
//! | `alloc_process_resident_bytes`, `alloc_process_resident_peak_bytes`, `alloc_host_live_bytes`, `alloc_host_peak_bytes` | | the process |
//! | `alloc_system_total_bytes`, `alloc_system_available_bytes` | | the machine |
//! | `alloc_cgroup_limit_bytes`, `alloc_cgroup_usage_bytes`, `alloc_cgroup_working_set_bytes`, `alloc_cgroup_headroom_bytes` | | the container |
//! | `alloc_scope_registry_capacity`, `alloc_scope_registry_in_use`, `alloc_scopes_not_created_total` | | the scope registry |
//! | `alloc_device_*`: one family per row of [`DEVICE_COLUMNS`] (reserved, allocated, cached, free, total, limit, peaks, efficiency, `ooms_total`, `alloc_retries_total`) | `device`, `backend` | each device |
//! | `alloc_oom_retries_total`, `alloc_oom_fallbacks_total` | | `retry_on_oom*` |

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::columns::{DEVICE_COLUMNS, Kind, Value};
use crate::device::{DeviceInfo, device_infos};
use crate::info::{MemoryInfo, memory_info_untracked};
use crate::scope_figures::{
    LiveFigures, NameFigures, RegistryFigures, Summary, live_by_name, name_figures,
    registry_figures,
};

/// The content type of [`Metrics::render`]'s output (Prometheus text 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the peak histograms, bytes: powers of 4 from 1 KiB to
/// 64 GiB (fixed, so every scrape has the same buckets).
pub const PEAK_BUCKETS: [u64; 14] = {
    let mut b = [0u64; 14];
    let mut i = 0;
    while i < 14 {
        b[i] = 1u64 << (10 + 2 * i);
        i += 1;
    }
    b
};

/// The quantiles exported per scope name and peak (`quantile` label): 1.0 is
/// the maximum.
pub const PEAK_QUANTILES: [(f64, &str); 5] = [
    (0.5, "0.5"),
    (0.9, "0.9"),
    (0.99, "0.99"),
    (0.999, "0.999"),
    (1.0, "1"),
];

/// A Prometheus registry with the memory collector in it. Register the
/// program's own metrics (request latency, say) with
/// [`registry_mut`](Self::registry_mut).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the memory collector.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MemoryCollector(None)));
        Metrics { registry }
    }

    /// The registry, to add metrics to.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Every metric now, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        match prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            Ok(()) => out,
            Err(e) => format!("# encoding failed: {e}\n"),
        }
    }
}

/// Every metric now, in the Prometheus text format: a [`Metrics`] rendered
/// once (for one-off dumps; a server keeps one `Metrics` and renders it per
/// scrape).
pub fn prometheus() -> String {
    Metrics::new().render()
}

/// Every figure one scrape writes.
#[derive(Clone, Debug)]
struct Figures {
    memory: MemoryInfo,
    devices: Vec<DeviceInfo>,
    names: Vec<NameFigures>,
    live: Vec<LiveFigures>,
    registry: RegistryFigures,
    retries: (u64, u64),
}

impl Figures {
    fn now() -> Self {
        let memory = memory_info_untracked();
        let (devices, names, live, registry) = alloc_host::untracked(|| {
            let names = name_figures();
            let live = live_by_name(&alloc_host::scope_tree(), &names);
            (device_infos(), names, live, registry_figures())
        });
        Figures {
            memory,
            devices,
            names,
            live,
            registry,
            retries: crate::retry::retry_counts(),
        }
    }
}

/// Reads every figure at scrape time (or, in tests, writes fixed ones).
#[derive(Debug)]
struct MemoryCollector(Option<Figures>);

type Enc<'a> = DescriptorEncoder<'a>;
type R = Result<(), std::fmt::Error>;

/// A gauge; an unknown value leaves the family without a sample (it is
/// still declared, so dashboards and tests can rely on the name).
fn gauge(enc: &mut Enc<'_>, name: &str, help: &str, v: Option<u64>) -> R {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match v {
        Some(v) => ConstGauge::new(v as i64).encode(m),
        None => Ok(()),
    }
}

fn counter(enc: &mut Enc<'_>, name: &str, help: &str, v: u64) -> R {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// The summary's buckets on the fixed bounds, non-cumulative (the encoder
/// accumulates), `+Inf` last. Exact: no bucket of a summary straddles a
/// power of two, so each lies wholly under one bound.
pub(crate) fn fixed_buckets(s: &Summary) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = PEAK_BUCKETS.iter().map(|b| (*b as f64, 0)).collect();
    out.push((f64::INFINITY, 0));
    for b in &s.buckets {
        let i = PEAK_BUCKETS
            .iter()
            .position(|bound| b.high <= *bound)
            .unwrap_or(PEAK_BUCKETS.len());
        out[i].1 += b.count;
    }
    out
}

type PerName = fn(&NameFigures) -> u64;

fn scopes(enc: &mut Enc<'_>, names: &[NameFigures], live: &[LiveFigures]) -> R {
    for (family, help, pick) in [
        (
            "alloc_scope_live_bytes",
            "Host bytes live in the scopes of this name now, nested scopes included.",
            (|l| l.live_bytes) as fn(&LiveFigures) -> u64,
        ),
        (
            "alloc_scope_device_live_bytes",
            "Device bytes live in the scopes of this name now, nested scopes included.",
            |l| l.device_live_bytes,
        ),
    ] {
        let mut m = enc.encode_descriptor(family, help, None, MetricType::Gauge)?;
        for l in live {
            let labels = [("scope", l.name.as_str())];
            ConstGauge::new(pick(l) as i64).encode(m.encode_family(&labels)?)?;
        }
    }
    for (family, help, pick) in [
        (
            "alloc_scope_host_peak_quantile_bytes",
            "Quantiles of the host peaks of the scopes of this name closed since start (estimate, within 1%; quantile 1 is the exact maximum).",
            (|n| &n.host_peak) as fn(&NameFigures) -> &Summary,
        ),
        (
            "alloc_scope_device_peak_quantile_bytes",
            "Quantiles of the device peaks of the scopes of this name closed since start (estimate, within 1%; quantile 1 is the exact maximum).",
            |n| &n.device_peak,
        ),
    ] {
        let mut m = enc.encode_descriptor(family, help, None, MetricType::Gauge)?;
        for n in names {
            let s = pick(n);
            for (q, label) in PEAK_QUANTILES {
                let labels = [("scope", n.name.as_str()), ("quantile", label)];
                ConstGauge::new(s.quantile(q) as i64).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    for (family, help, pick) in [
        (
            "alloc_scope_host_peak_bytes",
            "Host peak of each scope of this name, at close (bounds 4x apart: quantiles from alloc_scope_host_peak_quantile_bytes).",
            (|n| &n.host_peak) as fn(&NameFigures) -> &Summary,
        ),
        (
            "alloc_scope_device_peak_bytes",
            "Device peak of each scope of this name, at close (bounds 4x apart: quantiles from alloc_scope_device_peak_quantile_bytes).",
            |n| &n.device_peak,
        ),
    ] {
        let mut m = enc.encode_descriptor(family, help, None, MetricType::Histogram)?;
        for n in names {
            let s = pick(n);
            let labels = [("scope", n.name.as_str())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                s.sum as f64,
                s.count,
                &fixed_buckets(s),
                None,
            )?;
        }
    }
    let totals: [(&str, &str, PerName); 3] = [
        (
            "alloc_scope_closed",
            "Scopes of this name that closed.",
            |n| n.closed,
        ),
        (
            "alloc_scope_allocated_bytes",
            "Host bytes allocated by closed scopes of this name.",
            |n| n.bytes_allocated,
        ),
        (
            "alloc_scope_allocations",
            "Host allocations made by closed scopes of this name.",
            |n| n.allocations,
        ),
    ];
    for (family, help, pick) in totals {
        let mut m = enc.encode_descriptor(family, help, None, MetricType::Counter)?;
        for n in names {
            let labels = [("scope", n.name.as_str())];
            ConstCounter::new(pick(n)).encode(m.encode_family(&labels)?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "alloc_scope_wall_seconds",
        "Wall time of closed scopes of this name, summed.",
        None,
        MetricType::Counter,
    )?;
    for n in names {
        let labels = [("scope", n.name.as_str())];
        ConstCounter::new(n.wall_seconds).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn host(enc: &mut Enc<'_>, m: &MemoryInfo) -> R {
    gauge(
        enc,
        "alloc_process_resident_bytes",
        "Resident set size.",
        Some(m.process.rss),
    )?;
    gauge(
        enc,
        "alloc_process_resident_peak_bytes",
        "Highest resident set size.",
        Some(m.process.peak_rss),
    )?;
    gauge(
        enc,
        "alloc_host_live_bytes",
        "Host heap bytes live (tracking allocator).",
        Some(m.tracked.live),
    )?;
    gauge(
        enc,
        "alloc_host_peak_bytes",
        "Highest host heap bytes live.",
        Some(m.tracked.peak),
    )?;
    gauge(
        enc,
        "alloc_system_total_bytes",
        "Memory of the machine.",
        Some(m.system.total),
    )?;
    gauge(
        enc,
        "alloc_system_available_bytes",
        "Memory available on the machine.",
        Some(m.system.available),
    )?;
    let c = m.cgroup.as_ref();
    gauge(
        enc,
        "alloc_cgroup_limit_bytes",
        "The container's smallest memory limit.",
        c.and_then(|c| c.limit),
    )?;
    gauge(
        enc,
        "alloc_cgroup_usage_bytes",
        "The container's memory usage, page cache included.",
        c.and_then(|c| c.usage),
    )?;
    gauge(
        enc,
        "alloc_cgroup_working_set_bytes",
        "Usage less inactive file pages.",
        c.and_then(|c| c.working_set()),
    )?;
    gauge(
        enc,
        "alloc_cgroup_headroom_bytes",
        "Min over limited cgroups of limit - working set.",
        c.and_then(|c| c.headroom()),
    )
}

/// One family per row of [`DEVICE_COLUMNS`], one sample per device that
/// knows the figure, labelled `device` and `backend`.
fn devices(enc: &mut Enc<'_>, devs: &[DeviceInfo]) -> R {
    for c in DEVICE_COLUMNS {
        let kind = match c.kind {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
        };
        let mut m = enc.encode_descriptor(c.metric, c.help, None, kind)?;
        for d in devs {
            let Some(v) = (c.get)(d) else { continue };
            let labels = [("device", d.name.as_str()), ("backend", d.backend.as_str())];
            let sample = m.encode_family(&labels)?;
            match (c.kind, v) {
                (Kind::Gauge, Value::Int(v)) => ConstGauge::new(v as i64).encode(sample)?,
                (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(sample)?,
                (Kind::Counter, Value::Int(v)) => ConstCounter::new(v).encode(sample)?,
                (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(sample)?,
            }
        }
    }
    Ok(())
}

impl Collector for MemoryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now;
        let f = match &self.0 {
            Some(f) => f,
            None => {
                now = Figures::now();
                &now
            }
        };
        host(&mut enc, &f.memory)?;
        let reg = &f.registry;
        gauge(
            &mut enc,
            "alloc_scope_registry_capacity",
            "Scope slots in the registry.",
            Some(reg.capacity),
        )?;
        gauge(
            &mut enc,
            "alloc_scope_registry_in_use",
            "Scope slots in use (open, or closed but owning memory).",
            Some(reg.in_use),
        )?;
        counter(
            &mut enc,
            "alloc_scopes_not_created",
            "Scopes not created because the registry was full.",
            reg.not_created,
        )?;
        let (retries, fallbacks) = f.retries;
        counter(
            &mut enc,
            "alloc_oom_retries",
            "Retries made by retry_on_oom and retry_on_oom_async.",
            retries,
        )?;
        counter(
            &mut enc,
            "alloc_oom_fallbacks",
            "Fallbacks taken by retry_on_oom_or.",
            fallbacks,
        )?;
        devices(&mut enc, &f.devices)?;
        scopes(&mut enc, &f.names, &f.live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` in the text format, through the same collector as a scrape.
    fn render_fixed(f: Figures) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MemoryCollector(Some(f))));
        Metrics { registry }.render()
    }

    fn fixed() -> Figures {
        let mut f = Figures::now();
        f.devices = vec![DeviceInfo {
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
        }];
        f.live = vec![LiveFigures {
            name: "req \"2\"\n".into(),
            live_bytes: 200,
            device_live_bytes: 0,
        }];
        f
    }

    #[test]
    fn lines_parse_back_with_escaped_labels() {
        let text = render_fixed(fixed());
        assert!(
            text.contains("alloc_scope_live_bytes{scope=\"req \\\"2\\\"\\n\"} 200\n"),
            "{text}"
        );
        assert!(
            text.contains("alloc_device_reserved_bytes{device=\"gpu0\",backend=\"sim\"} 2097152\n"),
            "{text}"
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
        for c in DEVICE_COLUMNS {
            let family = match c.kind {
                Kind::Gauge => c.metric.to_owned(),
                Kind::Counter => format!("{}_total", c.metric),
            };
            let n = text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter(|l| l.split(' ').next() == Some(family.as_str()))
                .count();
            assert_eq!(n, 1, "{}:\n{text}", c.metric);
        }
    }

    #[test]
    fn buckets_land_on_the_first_fixed_bound_above() {
        let mut s = Summary::default();
        for v in [1, 1024, 2048, 1 << 40] {
            s.add(v);
        }
        let b = fixed_buckets(&s);
        assert_eq!(b.len(), PEAK_BUCKETS.len() + 1);
        assert_eq!(b[0], (1024.0, 2), "1 B and 1 KiB: first bucket");
        assert_eq!(b[1], (4096.0, 1), "2 KiB: the 4 KiB bucket");
        assert_eq!(
            b[PEAK_BUCKETS.len()],
            (f64::INFINITY, 1),
            "1 TiB: above 64 GiB"
        );
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 4);
        let mut s = Summary::default();
        for v in [1025, 4096, 4097] {
            s.add(v);
        }
        let b = fixed_buckets(&s);
        assert_eq!(b[1], (4096.0, 2), "1 KiB + 1 and 4 KiB: the 4 KiB bucket");
        assert_eq!(b[2], (16384.0, 1), "4 KiB + 1: the 16 KiB bucket");
    }

    #[test]
    fn renders_every_family_once_in_the_text_format() {
        let text = Metrics::new().render();
        for family in [
            "alloc_process_resident_bytes",
            "alloc_scope_registry_capacity",
            "alloc_scopes_not_created_total",
            "alloc_oom_retries_total",
            "alloc_scope_host_peak_bytes",
        ] {
            let n = text
                .lines()
                .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
                .count();
            assert_eq!(n, 1, "{family}:\n{text}");
        }
        assert!(text.contains("# TYPE alloc_scopes_not_created_total counter\n"));
        assert!(text.contains("# TYPE alloc_scope_host_peak_bytes histogram\n"));
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn range(&mut self, lo: u64, hi: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let unit =
                (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            lo + (unit * (hi - lo + 1) as f64) as u64
        }
    }

    /// Per-request peaks like the flagship server's under load (skewed: 90%
    /// within ±3% of 740 KiB, a tail to 3 MiB, 2% near 5 MiB): p50 ~740 KiB,
    /// p99 ~4.9 MiB, max ~5 MiB.
    pub(crate) fn flagship_like(n: usize, seed: u64) -> Vec<u64> {
        let mut r = Rng(seed);
        let kib = 1u64 << 10;
        (0..n)
            .map(|i| match i % 50 {
                0 | 1 => r.range(4800 * kib, 5120 * kib),
                2..=5 => r.range(800 * kib, 3 << 20),
                _ => r.range(718 * kib, 762 * kib),
            })
            .collect()
    }

    /// What Prometheus's `histogram_quantile(q, ...)` returns over
    /// `buckets` (`(le, cumulative count)`, `+Inf` last): linear
    /// interpolation inside the bucket that holds rank `q * total`, the
    /// first bucket starting at 0, the upper bound of the last finite
    /// bucket when the rank falls in `+Inf`.
    fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
        let total = buckets.last().unwrap().1;
        let rank = q * total;
        let i = buckets.iter().position(|b| b.1 >= rank).unwrap();
        if i == buckets.len() - 1 {
            return buckets[buckets.len() - 2].0;
        }
        let (start, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
        let (end, cum) = buckets[i];
        start + (end - start) * (rank - below) / (cum - below)
    }

    /// The value a Grafana query `expr` shows for scope `scope`, evaluated
    /// over the scrape `text`: `histogram_quantile(q, ... family_bucket ...)`
    /// or a plain selector with a `quantile="q"` label.
    fn panel_value(expr: &str, text: &str, scope: &str) -> f64 {
        let family = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("alloc_"))
            .unwrap();
        let scope_label = format!("scope=\"{scope}\"");
        let samples = text
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&scope_label));
        if let Some(rest) = expr.strip_prefix("histogram_quantile(") {
            let q: f64 = rest.split(',').next().unwrap().trim().parse().unwrap();
            let buckets: Vec<(f64, f64)> = samples
                .map(|l| {
                    let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    (le, l.rsplit_once(' ').unwrap().1.parse().unwrap())
                })
                .collect();
            return histogram_quantile(q, &buckets);
        }
        let q = expr
            .split("quantile=\"")
            .nth(1)
            .unwrap_or_else(|| panic!("`{expr}`: neither histogram_quantile nor a quantile label"))
            .split('"')
            .next()
            .unwrap();
        let label = format!("quantile=\"{q}\"");
        let mut samples = samples;
        let line = samples
            .find(|l| l.contains(&label))
            .unwrap_or_else(|| panic!("no sample of `{expr}` for {scope} in\n{text}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    /// The peak panels of the shipped Grafana dashboard, evaluated over a
    /// scrape of a flagship-like load, are within 10% of the exact quantiles.
    #[test]
    fn grafana_peak_panels_are_within_ten_percent_of_exact() {
        let host = flagship_like(3000, 0x9e37_79b9_7f4a_7c15);
        let device: Vec<u64> = flagship_like(3000, 0x1234_5678_9abc_def1)
            .iter()
            .map(|v| v * 3)
            .collect();
        let summary = |values: &[u64]| {
            let mut s = Summary::default();
            values.iter().for_each(|&v| s.add(v));
            s
        };
        let mut f = fixed();
        f.names = vec![NameFigures {
            name: "request".into(),
            closed: host.len() as u64,
            host_peak: summary(&host),
            device_peak: summary(&device),
            ..NameFigures::default()
        }];
        let text = render_fixed(f);
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../grafana/alloc-toolkit-memory.json")).unwrap();
        let mut failures = Vec::new();
        let mut checked = 0;
        for (title, values) in [
            ("Per-request host peak ($scope)", &host),
            ("Per-request device peak ($scope)", &device),
        ] {
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let panel = dash["panels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["title"] == title)
                .unwrap_or_else(|| panic!("no panel {title}"));
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let q: f64 = expr
                    .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .filter_map(|w| w.parse().ok())
                    .find(|q| (0.0..=1.0).contains(q))
                    .unwrap_or_else(|| panic!("no quantile in `{expr}`"));
                let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
                let exact = sorted[rank - 1] as f64;
                let shown = panel_value(expr, &text, "request");
                let err = (shown - exact) / exact;
                println!(
                    "{title} q {q}: exact {exact:.0}, panel {shown:.0} ({:+.1}%)",
                    100.0 * err
                );
                if err.abs() > 0.10 {
                    failures.push(format!(
                        "{title} q {q}: panel shows {shown:.0}, exact {exact:.0} ({:+.1}%): `{expr}`",
                        100.0 * err
                    ));
                }
                checked += 1;
            }
        }
        assert!(checked >= 4, "{checked} panel queries");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The quantile the power-of-two buckets `aggregates()` kept before
    /// returned (bucket `2^i` held `(2^(i-1), 2^i]`, linear interpolation
    /// inside it, capped at the maximum), for comparison.
    fn power_of_two_quantile(sorted: &[u64], q: f64) -> u64 {
        let bucket = |v: u64| 64 - v.saturating_sub(1).leading_zeros();
        let mut counts = [0u64; 65];
        sorted.iter().for_each(|&v| counts[bucket(v) as usize] += 1);
        let max = sorted[sorted.len() - 1];
        if q >= 1.0 {
            return max;
        }
        let rank = ((q * sorted.len() as f64).ceil() as u64).max(1);
        let mut below = 0;
        for (i, &n) in counts.iter().enumerate().filter(|(_, n)| **n != 0) {
            if below + n >= rank {
                let upper = if i >= 64 { u64::MAX } else { 1u64 << i };
                let lo = if upper <= 1 { 0 } else { upper / 2 };
                let v = lo as f64 + (rank - below) as f64 / n as f64 * (upper - lo) as f64;
                return (v as u64).min(max);
            }
            below += n;
        }
        max
    }

    /// Exact quantiles against every estimate a user reads, on a skewed
    /// distribution and on a flagship-like load. The figures for
    /// benches/RESULTS.md: `cargo test -p alloc-toolkit --lib
    /// exact_against_estimates -- --nocapture`.
    #[test]
    fn exact_against_estimates() {
        let skewed: Vec<u64> = {
            let mut r = Rng(0x5eed);
            (0..20_000)
                .map(|i| {
                    if i % 20 == 0 {
                        r.range(800 << 10, 5 << 20)
                    } else {
                        r.range(718 << 10, 762 << 10)
                    }
                })
                .collect()
        };
        for (what, mut values) in [
            (
                "skewed (95% at 740 KiB ±3%, tail to 5 MiB), n 20000",
                skewed,
            ),
            (
                "flagship-like per-request host peaks, n 3000",
                flagship_like(3000, 0x9e37_79b9_7f4a_7c15),
            ),
        ] {
            let mut s = Summary::default();
            values.iter().for_each(|&v| s.add(v));
            values.sort_unstable();
            let fixed: Vec<(f64, f64)> = fixed_buckets(&s)
                .iter()
                .scan(0u64, |cum, &(le, n)| {
                    *cum += n;
                    Some((le, *cum as f64))
                })
                .collect();
            println!("\n{what}");
            println!(
                "{:>6} {:>12} {:>22} {:>22} {:>22}",
                "q", "exact", "old aggregates (2x)", "histogram_quantile 4x", "new (sketch)"
            );
            let pct = |v: f64, e: f64| format!("{:.0} ({:+.1}%)", v, 100.0 * (v - e) / e);
            for q in [0.5, 0.9, 0.99, 1.0] {
                let rank = ((q * values.len() as f64).ceil() as usize).max(1);
                let exact = values[rank - 1] as f64;
                let old = power_of_two_quantile(&values, q) as f64;
                let prom = histogram_quantile(q, &fixed);
                let new = s.quantile(q) as f64;
                println!(
                    "{:>6} {:>12.0} {:>22} {:>22} {:>22}",
                    q,
                    exact,
                    pct(old, exact),
                    pct(prom, exact),
                    pct(new, exact)
                );
                assert!(
                    (new - exact).abs() <= exact / 100.0,
                    "{what} q {q}: {new} vs {exact}"
                );
            }
        }
    }

    /// Every metric the shipped Grafana dashboard queries is exported.
    #[test]
    fn the_grafana_dashboard_queries_exported_metrics() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../grafana/alloc-toolkit-memory.json")).unwrap();
        let text = Metrics::new().render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut checked = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if let Some(base) = word.strip_prefix("alloc_") {
                        let base = base.trim_end_matches("_bucket");
                        let name = format!("alloc_{base}");
                        assert!(
                            families.contains(&name.as_str()),
                            "{name} (in `{expr}`) is not exported"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 20, "{checked}");
    }
}
