//! The memory dashboard: one self-contained HTML page (inline CSS and SVG,
//! no script, no external resource) and the same data as JSON, for a
//! server's read-only `/debug/memory` and `/debug/memory.json` routes.
//!
//! It shows host and device memory over time (from a monitor's series), the
//! machine, container and process, the device summary, the per-name
//! aggregates of closed scopes (p50/p99/max of host and device peaks), the
//! open scopes, the memory that outlived its scope, the top allocation sites
//! of the largest scopes (sampled heap profile, with the `profile` feature;
//! the page links to `pprof/heap`, the server's `/debug/pprof/heap`), and the
//! [`recommendations`](crate::recommendations). Each figure says its unit
//! and whether it is exact or an estimate (the [`DashboardData::legend`]).
//!
//! Its size is bounded whatever the process does: at most [`OPEN_ROWS`]
//! rows of open scopes and [`LEFT_BEHIND_ROWS`] rows of closed scopes that
//! still own memory (the largest; all of them are summed and counted), each
//! row of a bounded size (names are at most 63 bytes), and one row per
//! scope name (at most `alloc_host::MAX_NAMES` + 1).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use alloc_host::{ScopeStats, ScopeTree, format_bytes as b};
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

/// The most rows of open scopes the dashboard lists (depth-first, with the
/// closed scopes they hang from); the rest are counted.
pub const OPEN_ROWS: usize = 200;

/// The most closed scopes that still own memory the dashboard lists (the
/// largest by bytes owned); all of them are summed and counted.
pub const LEFT_BEHIND_ROWS: usize = 20;

/// Memory that outlived its scope: closed scopes that still own bytes (a
/// cache filled in a request, a buffer handed to another thread).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LeftBehind {
    /// Closed scopes that own memory.
    pub scopes: u64,
    /// Host bytes they own, together (exact).
    pub live_bytes: u64,
    /// Device bytes they own, together (exact).
    pub device_live_bytes: u64,
    /// The largest, by host and device bytes owned, at most
    /// [`LEFT_BEHIND_ROWS`].
    pub largest: Vec<ScopeStats>,
}

/// The scope registry's picture as the dashboard shows it: open scopes as a
/// tree, closed ones that still own memory as a ranked list.
#[derive(Clone, Debug, Serialize)]
pub struct LiveScopes {
    /// Open scopes and the closed scopes they hang from, depth-first, at
    /// most [`OPEN_ROWS`].
    pub open: ScopeTree,
    /// Open scopes in all.
    pub open_scopes: u64,
    /// Open scopes past [`OPEN_ROWS`], not listed.
    pub open_not_listed: u64,
    /// Closed scopes that still own memory.
    pub left_behind: LeftBehind,
}

impl LiveScopes {
    /// `tree` split into the open scopes and what closed scopes left behind.
    pub fn from_tree(tree: ScopeTree) -> LiveScopes {
        let ScopeTree {
            scopes,
            scopes_not_created,
            capacity,
        } = tree;
        // Keep an open scope and every scope it hangs from: walk children
        // before parents (the tree is depth-first, parents first).
        let mut needed: HashSet<u64> = HashSet::new();
        let mut keep = vec![false; scopes.len()];
        for (i, n) in scopes.iter().enumerate().rev() {
            if n.stats.open || needed.contains(&n.stats.id) {
                keep[i] = true;
                if let Some(p) = n.parent {
                    needed.insert(p);
                }
            }
        }
        let mut left = LeftBehind::default();
        let mut open = Vec::new();
        let (mut open_scopes, mut open_not_listed) = (0, 0);
        for (n, keep) in scopes.into_iter().zip(keep) {
            let s = &n.stats;
            open_scopes += u64::from(s.open);
            if !s.open && s.live_bytes + s.device.live_bytes > 0 {
                left.scopes += 1;
                left.live_bytes += s.live_bytes;
                left.device_live_bytes += s.device.live_bytes;
                left.largest.push(s.clone());
                // Keep the list short as it grows: sort and cut now and then.
                if left.largest.len() >= 8 * LEFT_BEHIND_ROWS {
                    rank(&mut left.largest);
                }
            }
            if keep {
                if open.len() < OPEN_ROWS {
                    open.push(n);
                } else if n.stats.open {
                    open_not_listed += 1;
                }
            }
        }
        rank(&mut left.largest);
        LiveScopes {
            open: ScopeTree {
                scopes: open,
                scopes_not_created,
                capacity,
            },
            open_scopes,
            open_not_listed,
            left_behind: left,
        }
    }
}

/// The largest [`LEFT_BEHIND_ROWS`] by bytes owned, largest first.
fn rank(v: &mut Vec<ScopeStats>) {
    v.sort_by_key(|s| std::cmp::Reverse((s.live_bytes + s.device.live_bytes, s.id)));
    v.truncate(LEFT_BEHIND_ROWS);
}

/// What each figure of [`DashboardData`] is: its unit, exact or an estimate.
pub fn legend() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "memory",
            "bytes, exact as read at the time of the page (system, container, process, tracked heap, devices)",
        ),
        (
            "series",
            "t: time since the monitor started; figures: bytes, exact at each sample",
        ),
        (
            "names.host_p50, host_p99, device_p50, device_p99",
            "bytes; estimate, ±1% (quantiles of the peaks of closed scopes)",
        ),
        (
            "names.closed, allocations, bytes_allocated, host_peak.max, device_peak.max",
            "count or bytes, exact",
        ),
        (
            "names.wall_seconds",
            "seconds, exact (summed over the closed scopes)",
        ),
        (
            "scopes",
            "bytes and counts, exact (each scope read field by field)",
        ),
        (
            "sites",
            "bytes, estimate (sampled heap in use, weighted; see sites.rate)",
        ),
    ])
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
    /// Open scopes, and the memory closed scopes left behind.
    pub scopes: LiveScopes,
    /// What to do.
    pub recommendations: Vec<Recommendation>,
    /// Each figure's unit, and whether it is exact or an estimate.
    pub legend: BTreeMap<&'static str, &'static str>,
    /// The top allocation sites of the scope names holding the most sampled
    /// in-use bytes (empty while heap sampling is off, or without the
    /// `profile` feature).
    pub sites: SitePanel,
}

/// The "top allocation sites" panel: from alloc-host's sampled heap profile
/// (estimates), for the [`SITE_SCOPES`] scope names with the most in-use
/// bytes, their [`SITE_ROWS`] largest sites each.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SitePanel {
    /// The mean sampling interval in bytes; 0: sampling is off.
    pub rate: u64,
    /// Scope names, largest first.
    pub scopes: Vec<ScopeSites>,
}

/// One scope name's top sites.
#[derive(Clone, Debug, Serialize)]
pub struct ScopeSites {
    /// The scope name (`(untracked)`: allocated while tracking was off).
    pub scope: String,
    /// Estimated in-use bytes of the name.
    pub bytes: u64,
    /// Its largest sites: function, estimated bytes, share of the name's bytes.
    pub sites: Vec<(String, u64, f64)>,
}

/// Scope names in the sites panel.
pub const SITE_SCOPES: usize = 3;
/// Sites per scope name in the panel.
pub const SITE_ROWS: usize = 5;

impl SitePanel {
    /// Reads the in-use profile now (symbolizes its sites).
    #[cfg(feature = "profile")]
    pub fn now() -> Self {
        use alloc_host::profile::{Filter, Kind, profile, profile_filtered, sample_rate};
        let rate = sample_rate();
        if rate == 0 && alloc_host::profile::counts().live == 0 {
            return SitePanel::default();
        }
        let all = profile(Kind::InUse);
        let mut by: BTreeMap<String, f64> = BTreeMap::new();
        for s in &all.samples {
            *by.entry(s.scope.clone()).or_default() += s.bytes;
        }
        let mut names: Vec<(String, f64)> = by.into_iter().collect();
        names.sort_by(|a, b| b.1.total_cmp(&a.1));
        names.truncate(SITE_SCOPES);
        let scopes = names
            .into_iter()
            .map(|(scope, bytes)| {
                let p = profile_filtered(Kind::InUse, Filter::Name(scope.clone()));
                let sites = p
                    .top_sites(SITE_ROWS)
                    .into_iter()
                    .map(|s| (s.function, s.bytes.round() as u64, s.share))
                    .collect();
                ScopeSites {
                    scope,
                    bytes: bytes.round() as u64,
                    sites,
                }
            })
            .collect();
        SitePanel { rate, scopes }
    }

    /// Without the `profile` feature: empty.
    #[cfg(not(feature = "profile"))]
    pub fn now() -> Self {
        SitePanel::default()
    }
}

impl DashboardData {
    /// The process now, with `series` from a monitor.
    pub fn now(title: &str, series: Vec<Sample>) -> Self {
        let facts = Facts::now();
        let recommendations = recommend(&facts);
        let (names, registry, scopes) = alloc_host::untracked(|| {
            (name_figures(), registry_figures(), alloc_host::scope_tree())
        });
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
            scopes: LiveScopes::from_tree(scopes),
            recommendations,
            legend: legend(),
            sites: SitePanel::now(),
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
        "<h2>Closed scopes by name</h2><p class=sub>registry: {} of {} slots in use, {} scope(s) not created. \
         p50 and p99 are estimates, ±1%, of the peaks of the closed scopes; max, allocated and counts are exact</p>",
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
            "closed (count)",
            "host p50 (estimate, ±1%)",
            "host p99 (estimate, ±1%)",
            "host max (exact)",
            "device p50 (estimate, ±1%)",
            "device p99 (estimate, ±1%)",
            "device max (exact)",
            "allocated (exact)",
            "mean wall (exact)",
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
    live_scopes(&mut out, &data.scopes);
    sites_panel(&mut out, &data.sites);
    out.push_str("</body></html>\n");
    out
}

fn sites_panel(out: &mut String, p: &SitePanel) {
    out.push_str("<h2>Top allocation sites</h2>");
    if p.scopes.is_empty() {
        out.push_str(if p.rate == 0 {
            "<p class=sub>heap sampling is off: set ALLOC_PROFILE_RATE=524288 (bytes) or call alloc_host::set_sample_rate</p>\n"
        } else {
            "<p class=sub>no sampled block in use</p>\n"
        });
        return;
    }
    let _ = writeln!(
        out,
        "<p class=sub>sampled heap in use (estimates; one sample per {} allocated on average), the {} scope names holding the most, their {} largest sites; full stacks: <a href=\"pprof/heap?format=svg\">flamegraph</a>, <a href=\"pprof/heap\">pprof</a></p><table>",
        b(p.rate),
        SITE_SCOPES,
        SITE_ROWS
    );
    head(
        out,
        &[
            "scope name",
            "in use (est.)",
            "site",
            "bytes (est.)",
            "share",
        ],
    );
    for s in &p.scopes {
        for (i, (f, bytes, share)) in s.sites.iter().enumerate() {
            let (name, total) = if i == 0 {
                (s.scope.clone(), b(s.bytes))
            } else {
                (String::new(), String::new())
            };
            row(
                out,
                &[
                    name,
                    total,
                    f.clone(),
                    b(*bytes),
                    format!("{:.1} %", share * 100.0),
                ],
            );
        }
    }
    out.push_str("</table>\n");
}

fn live_scopes(out: &mut String, l: &LiveScopes) {
    let _ = write!(
        out,
        "<h2>Open scopes ({})</h2><p class=sub>bytes, exact; with the closed scopes they hang from",
        l.open_scopes
    );
    if l.open_not_listed > 0 {
        let _ = write!(
            out,
            "; the first {OPEN_ROWS} rows, {} more open scope(s) not listed",
            l.open_not_listed
        );
    }
    let _ = write!(out, "</p><pre>{}</pre>", escape_html(&l.open.render()));
    let left = &l.left_behind;
    out.push_str("<h2>Memory that outlived its scope</h2>");
    if left.scopes == 0 {
        out.push_str("<p class=sub>none: every closed scope gave its memory back</p>");
        return;
    }
    let _ = writeln!(
        out,
        "<p class=sub>{} closed scope(s) still own {} host and {} device memory (exact); the {} largest:</p><table>",
        left.scopes,
        b(left.live_bytes),
        b(left.device_live_bytes),
        left.largest.len()
    );
    head(
        out,
        &[
            "scope (closed)",
            "id",
            "host live (exact)",
            "device live (exact)",
            "host peak (exact)",
            "live blocks",
            "open for",
        ],
    );
    for s in &left.largest {
        row(
            out,
            &[
                s.name.clone(),
                s.id.to_string(),
                b(s.live_bytes),
                b(s.device.live_bytes),
                b(s.peak_bytes),
                s.live_allocations.to_string(),
                format!("{:.2} ms", s.wall_time.as_secs_f64() * 1e3),
            ],
        );
    }
    out.push_str("</table>\n");
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

    fn node(id: u64, parent: Option<u64>, open: bool, live: u64) -> alloc_host::ScopeNode {
        alloc_host::ScopeNode {
            stats: ScopeStats {
                id,
                name: format!("s{id}"),
                open,
                live_bytes: live,
                ..ScopeStats::default()
            },
            parent,
        }
    }

    #[test]
    fn open_rows_are_bounded_and_keep_the_scopes_they_hang_from() {
        // The process, a closed scope with 250 open children, and one closed
        // scope that still owns memory.
        let mut scopes = vec![node(1, None, true, 0), node(2, Some(1), false, 0)];
        scopes.extend((3..253).map(|id| node(id, Some(2), true, 0)));
        scopes.push(node(900, Some(1), false, 4096));
        let l = LiveScopes::from_tree(ScopeTree {
            scopes,
            scopes_not_created: 0,
            capacity: 16_384,
        });
        assert_eq!(l.open.scopes.len(), OPEN_ROWS);
        let ids: Vec<u64> = l.open.scopes.iter().map(|n| n.stats.id).collect();
        assert_eq!(&ids[..3], [1, 2, 3], "the closed parent is kept");
        assert!(!ids.contains(&900), "a closed leaf is not in the tree");
        assert_eq!((l.open_scopes, l.open_not_listed), (251, 52));
        assert_eq!(
            (l.left_behind.scopes, l.left_behind.live_bytes),
            (1, 4096),
            "an empty closed parent is not memory left behind"
        );
        let html = {
            let mut out = String::new();
            live_scopes(&mut out, &l);
            out
        };
        assert!(html.contains("52 more open scope(s) not listed"), "{html}");
    }
}
