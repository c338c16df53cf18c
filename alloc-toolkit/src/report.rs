//! A report a person reads at a glance: memory of the machine, the container,
//! the process and each device in two tables, then the scope tree and the
//! closed scopes by name (peak quantiles, estimates within 1%).

use std::fmt::Write as _;

use alloc_host::{ScopeTree, format_bytes as b};

use crate::columns::{DEVICE_COLUMNS, DeviceColumn, device_label};
use crate::device::DeviceInfo;
use crate::info::{MemoryInfo, memory_info_untracked};
use crate::scope_figures::{NameFigures, QUANTILE_NOTE, name_figures};

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), b)
}

/// The device table: one column per row of [`DEVICE_COLUMNS`].
fn device_table(out: &mut String, devices: &[DeviceInfo]) {
    // Each column as wide as its title, and at least as a formatted size;
    // the first as the longest device label.
    let width = |c: &DeviceColumn| c.title.len().max(11);
    let labels: Vec<String> = devices.iter().map(device_label).collect();
    let first = labels.iter().map(String::len).max().unwrap_or(0).max(14);
    let _ = write!(out, "\n{:<first$}", "device");
    for c in DEVICE_COLUMNS {
        let _ = write!(out, " {:>w$}", c.title, w = width(c));
    }
    let rule = first + DEVICE_COLUMNS.iter().map(|c| 1 + width(c)).sum::<usize>();
    let _ = writeln!(out, "\n{}", "-".repeat(rule));
    for (d, label) in devices.iter().zip(&labels) {
        let _ = write!(out, "{label:<first$}");
        for c in DEVICE_COLUMNS {
            let _ = write!(out, " {:>w$}", c.text(d), w = width(c));
        }
        out.push('\n');
    }
}

/// The tables for `info` and, when given, the scope tree: the machine, the
/// container, the process and each device, then the scopes.
pub fn render_memory_report(info: &MemoryInfo, scopes: Option<&ScopeTree>) -> String {
    let mut out = String::new();
    let (avail, from) = info.host_available();
    let _ = writeln!(out, "{:<22} {:>12} {:>12}  note", "host", "used", "limit");
    let _ = writeln!(out, "{}", "-".repeat(64));
    let sys_used = info.system.total.saturating_sub(info.system.available);
    let _ = writeln!(
        out,
        "{:<22} {:>12} {:>12}  {} available ({from})",
        "system",
        b(sys_used),
        b(info.system.total),
        b(avail)
    );
    if let Some(c) = &info.cgroup {
        let _ = writeln!(
            out,
            "{:<22} {:>12} {:>12}  cgroup {:?} at {}",
            "container",
            opt(c.usage),
            opt(c.limit),
            c.version,
            c.dir.display()
        );
    }
    let _ = writeln!(
        out,
        "{:<22} {:>12} {:>12}  peak RSS {}",
        "process RSS",
        b(info.process.rss),
        b(info.host_limit()),
        b(info.process.peak_rss)
    );
    let t = &info.tracked;
    let note = if t.installed {
        format!("peak {}, {} live blocks", b(t.peak), t.live_allocations)
    } else {
        "TrackingAllocator not installed".to_owned()
    };
    let _ = writeln!(
        out,
        "{:<22} {:>12} {:>12}  {note}",
        "tracked heap",
        b(t.live),
        "-"
    );
    if !info.devices.is_empty() {
        device_table(&mut out, &info.devices);
    }
    if let Some(tree) = scopes {
        let _ = writeln!(out, "\n{}", tree.render());
    }
    out
}

/// The closed scopes of each name: how many, and the p50, p99 and max of
/// their host and device peaks. The quantiles are estimates within 1% of the
/// exact ones (the title says so); the max is exact. Empty when no scope
/// has closed.
pub fn render_name_table(names: &[NameFigures]) -> String {
    let mut out = String::new();
    if names.is_empty() {
        return out;
    }
    let first = names
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(0)
        .max(20);
    let _ = writeln!(
        out,
        "closed scopes by name (peaks at close; p50, p99: {QUANTILE_NOTE})"
    );
    let _ = writeln!(
        out,
        "{:<first$} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "name", "closed", "host p50", "host p99", "host max", "dev p50", "dev p99", "dev max"
    );
    let _ = writeln!(out, "{}", "-".repeat(first + 10 + 6 * 12));
    for n in names {
        let (h, d) = (&n.host_peak, &n.device_peak);
        let _ = writeln!(
            out,
            "{:<first$} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
            n.name,
            n.closed,
            b(h.quantile(0.5)),
            b(h.quantile(0.99)),
            b(h.max),
            b(d.quantile(0.5)),
            b(d.quantile(0.99)),
            b(d.max)
        );
    }
    out
}

/// [`render_memory_report`] of the process now, scopes included: the
/// machine, container, process and device memory, the scope tree, then the
/// closed scopes by name ([`render_name_table`]) (not to be confused with
/// `alloc_host::report`, the scope tree alone).
pub fn memory_report() -> String {
    let info = memory_info_untracked();
    alloc_host::untracked(|| {
        let mut out = render_memory_report(&info, Some(&alloc_host::scope_tree()));
        let names = render_name_table(&name_figures());
        if !names.is_empty() {
            out.push('\n');
            out.push_str(&names);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_a_row_per_part() {
        let text = render_memory_report(&crate::memory_info(), None);
        for row in ["system", "process RSS", "tracked heap"] {
            assert!(
                text.lines().any(|l| l.starts_with(row)),
                "{row} missing:\n{text}"
            );
        }
    }

    #[test]
    fn name_table_says_its_quantiles_are_estimates_and_lines_up() {
        let mut host_peak = alloc_host::PeakSummary::default();
        for v in 1..=1000u64 {
            host_peak.add(v << 20);
        }
        let names = [NameFigures {
            name: "request".into(),
            closed: 1000,
            host_peak,
            ..NameFigures::default()
        }];
        let text = render_name_table(&names);
        let mut lines = text.lines();
        let title = lines.next().unwrap();
        assert!(title.contains("p50, p99: estimate, ±1%"), "{text}");
        let header = lines.next().unwrap();
        let row = text.lines().find(|l| l.starts_with("request ")).unwrap();
        assert_eq!(header.len(), row.len(), "\n{header}\n{row}");
        // p50 of 1..=1000 MiB is 500 MiB (estimate within 1%), max exact
        let p50 = names[0].host_peak.quantile(0.5);
        assert!(p50.abs_diff(500 << 20) * 100 <= 500 << 20, "{p50}");
        for want in [b(p50), "1000.00 MiB".to_owned()] {
            assert!(row.contains(&want), "{want} not in {row}");
        }
        assert_eq!(render_name_table(&[]), "");
    }

    #[test]
    fn device_rows_line_up_with_the_header() {
        let mut info = crate::memory_info();
        info.devices = vec![crate::device::DeviceInfo {
            name: "gpu0".into(),
            backend: "sim".into(),
            free: Some(1 << 30),
            total: Some(2 << 30),
            limit: Some(1 << 30),
            reserved: 4 << 20,
            allocated: 3 << 20,
            peak_reserved: 4 << 20,
            peak_allocated: 3 << 20,
            cached: 1 << 20,
            efficiency: 0.75,
            num_ooms: 2,
            num_alloc_retries: 0,
        }];
        let text = render_memory_report(&info, None);
        let header = text.lines().find(|l| l.starts_with("device ")).unwrap();
        let row = text.lines().find(|l| l.starts_with("gpu0 (sim)")).unwrap();
        assert_eq!(header.len(), row.len(), "\n{header}\n{row}");
        assert!(row.contains("1.00 GiB"), "the cap: {row}");
    }
}
