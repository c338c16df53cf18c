//! The memory dashboard: one self-contained HTML page (inline CSS and SVG,
//! no script, no external resource) and the same data as JSON, for a
//! server's read-only `/debug/memory` and `/debug/memory.json` routes.
//!
//! It shows host and device memory over time (from a monitor's series), the
//! machine, container and process, the device summary, the per-name
//! aggregates of closed scopes (p50/p99/max of host and device peaks), the
//! live scope tree, and the [`recommendations`](crate::recommendations).

use std::fmt::Write as _;

use alloc_host::{ScopeTree, format_bytes as b};
use serde::Serialize;

use crate::columns::{DEVICE_COLUMNS, device_label};
use crate::device::DeviceInfo;
use crate::info::MemoryInfo;
use crate::monitor::Sample;
use crate::recommend::{Facts, Recommendation, recommend};
use crate::scope_figures::{NameFigures, RegistryFigures, name_figures, registry_figures};
use crate::svg::plot_svg;

/// The per-name figures with their quantiles, as the page shows them.
#[derive(Clone, Debug, Serialize)]
pub struct NameRow {
    /// The aggregates.
    #[serde(flatten)]
    pub figures: NameFigures,
    /// Median host peak, bytes.
    pub host_p50: u64,
    /// 99th percentile host peak, bytes.
    pub host_p99: u64,
    /// Median device peak, bytes.
    pub device_p50: u64,
    /// 99th percentile device peak, bytes.
    pub device_p99: u64,
}

/// Everything the page shows.
#[derive(Clone, Debug, Serialize)]
pub struct DashboardData {
    /// A title (the program's name).
    pub title: String,
    /// System, container, process, tracked heap, devices.
    pub memory: MemoryInfo,
    /// Host and device over time (a monitor's series; may be empty).
    pub series: Vec<Sample>,
    /// Closed scopes by name.
    pub names: Vec<NameRow>,
    /// The scope registry.
    pub registry: RegistryFigures,
    /// The live scopes.
    pub scopes: ScopeTree,
    /// What to do.
    pub recommendations: Vec<Recommendation>,
}

impl DashboardData {
    /// The process now, with `series` from a monitor.
    pub fn now(title: &str, series: Vec<Sample>) -> Self {
        let facts = Facts::now();
        let recommendations = recommend(&facts);
        let (names, registry, scopes) =
            alloc_host::untracked(|| (name_figures(), registry_figures(), alloc_host::snapshot()));
        DashboardData {
            title: title.to_owned(),
            memory: facts.memory,
            series,
            names: names
                .into_iter()
                .map(|f| NameRow {
                    host_p50: f.host_peak.quantile(0.5),
                    host_p99: f.host_peak.quantile(0.99),
                    device_p50: f.device_peak.quantile(0.5),
                    device_p99: f.device_peak.quantile(0.99),
                    figures: f,
                })
                .collect(),
            registry,
            scopes,
            recommendations,
        }
    }

    /// The data as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// `text` with `& < > " '` escaped for HTML.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:.9em;background:#fff}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}\
td:first-child,th:first-child{text-align:left}th{background:#eee}.sub{color:#666;font-size:.85em}\
.rec{border-left:4px solid #888;background:#fff;padding:.4em .8em;margin:.4em 0}.Critical{border-color:#c62828}\
table.host td:last-child{text-align:left}.Warning{border-color:#ef6c00}.Info{border-color:#1565c0}pre{background:#fff;border:1px solid #ddd;padding:.6em;font-size:.8em;overflow:auto}";

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), b)
}

fn row(out: &mut String, cells: &[String]) {
    out.push_str("<tr>");
    for c in cells {
        let _ = write!(out, "<td>{}</td>", escape_html(c));
    }
    out.push_str("</tr>\n");
}

fn head(out: &mut String, cells: &[&str]) {
    out.push_str("<tr>");
    for c in cells {
        let _ = write!(out, "<th>{c}</th>");
    }
    out.push_str("</tr>\n");
}

fn host_table(out: &mut String, m: &MemoryInfo) {
    out.push_str("<h2>Host</h2><table class=host>\n");
    head(out, &["", "used", "limit", "note"]);
    let (avail, from) = m.host_available();
    row(
        out,
        &[
            "system".into(),
            b(m.system.total.saturating_sub(m.system.available)),
            b(m.system.total),
            format!("{} available ({from})", b(avail)),
        ],
    );
    if let Some(c) = &m.cgroup {
        row(
            out,
            &[
                "container".into(),
                opt(c.usage),
                opt(c.limit),
                format!(
                    "working set {}, headroom {}",
                    opt(c.working_set()),
                    opt(c.headroom())
                ),
            ],
        );
    }
    row(
        out,
        &[
            "process RSS".into(),
            b(m.process.rss),
            b(m.host_limit()),
            format!("peak {}", b(m.process.peak_rss)),
        ],
    );
    let t = &m.tracked;
    row(
        out,
        &[
            "tracked heap".into(),
            b(t.live),
            "-".into(),
            if t.installed {
                format!("peak {}, {} live blocks", b(t.peak), t.live_allocations)
            } else {
                "tracking allocator not installed".into()
            },
        ],
    );
    out.push_str("</table>\n");
}

fn device_table(out: &mut String, devices: &[DeviceInfo]) {
    out.push_str("<h2>Devices</h2>");
    if devices.is_empty() {
        out.push_str("<p class=sub>no device registered</p>");
        return;
    }
    out.push_str("<table>\n");
    let titles: Vec<&str> = std::iter::once("device")
        .chain(DEVICE_COLUMNS.iter().map(|c| c.title))
        .collect();
    head(out, &titles);
    for d in devices {
        let cells: Vec<String> = std::iter::once(device_label(d))
            .chain(DEVICE_COLUMNS.iter().map(|c| c.text(d)))
            .collect();
        row(out, &cells);
    }
    out.push_str("</table>\n");
}

fn names_table(out: &mut String, names: &[NameRow], reg: &RegistryFigures) {
    let _ = write!(
        out,
        "<h2>Closed scopes by name</h2><p class=sub>registry: {} of {} slots in use, {} scope(s) not created</p>",
        reg.in_use, reg.capacity, reg.not_created
    );
    if names.is_empty() {
        out.push_str("<p class=sub>no scope has closed yet</p>");
        return;
    }
    out.push_str("<table>\n");
    head(
        out,
        &[
            "scope",
            "closed",
            "host p50",
            "host p99",
            "host max",
            "device p50",
            "device p99",
            "device max",
            "allocated",
            "mean wall",
        ],
    );
    for n in names {
        let f = &n.figures;
        row(
            out,
            &[
                f.name.clone(),
                f.closed.to_string(),
                b(n.host_p50),
                b(n.host_p99),
                b(f.host_peak.max),
                b(n.device_p50),
                b(n.device_p99),
                b(f.device_peak.max),
                b(f.bytes_allocated),
                format!("{:.2} ms", 1e3 * f.wall_seconds / f.closed.max(1) as f64),
            ],
        );
    }
    out.push_str("</table>\n");
}

fn recommendations(out: &mut String, recs: &[Recommendation]) {
    out.push_str("<h2>Recommendations</h2>");
    if recs.is_empty() {
        out.push_str("<p class=sub>none: no rule fired</p>");
    }
    for r in recs {
        let _ = writeln!(
            out,
            "<div class=\"rec {:?}\"><b>{:?}</b> {} — {}<br><span class=sub>{}</span><br>{}</div>",
            r.severity,
            r.severity,
            escape_html(&r.subject),
            r.rule,
            escape_html(&r.evidence),
            escape_html(&r.remedy)
        );
    }
}

/// The page for `data`.
pub fn render_html(data: &DashboardData) -> String {
    let title = escape_html(&data.title);
    let mut out = String::with_capacity(64 << 10);
    let _ = write!(
        out,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}: memory</title><style>{STYLE}</style></head><body>\n\
         <h1>{title}: memory</h1><p class=sub>the same data as JSON: <a href=\"memory.json\">memory.json</a>; reload for new figures</p>\n"
    );
    recommendations(&mut out, &data.recommendations);
    out.push_str("<h2>Over time</h2>");
    if data.series.is_empty() {
        out.push_str("<p class=sub>no monitor series</p>");
    } else {
        out.push_str(&plot_svg(&data.series, "host and device memory"));
    }
    host_table(&mut out, &data.memory);
    device_table(&mut out, &data.memory.devices);
    names_table(&mut out, &data.names, &data.registry);
    let _ = writeln!(
        out,
        "<h2>Live scopes ({})</h2><pre>{}</pre></body></html>",
        data.scopes.scopes.len(),
        escape_html(&data.scopes.render())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let mut d = DashboardData::now(
            "<test>",
            vec![
                Sample::default(),
                Sample {
                    rss: 10,
                    ..Sample::default()
                },
            ],
        );
        d.names.push(NameRow {
            figures: NameFigures {
                name: "request{route=<x>}".into(),
                closed: 3,
                ..NameFigures::default()
            },
            host_p50: 1 << 20,
            host_p99: 2 << 20,
            device_p50: 0,
            device_p99: 0,
        });
        let html = render_html(&d);
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("&lt;test&gt;: memory") && !html.contains("<test>"));
        assert!(html.contains("request{route=&lt;x&gt;}"));
        assert!(html.contains("<svg") && html.contains("1.00 MiB"));
        for external in ["http://", "https://", "<script", "src=", "@import"] {
            let n = html.matches(external).count();
            // The SVG namespace is an identifier, not a fetch.
            let allowed = if external == "http://" {
                html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
            } else {
                0
            };
            assert_eq!(n, allowed, "{external} in the page");
        }
        let v: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(v["names"][0]["name"], "request{route=<x>}");
        assert_eq!(v["names"][0]["host_p99"], 2 << 20);
        assert!(v["memory"]["system"]["total"].as_u64().unwrap() > 0);
    }
}
