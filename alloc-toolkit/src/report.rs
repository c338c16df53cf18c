//! A report a person reads at a glance: memory of the machine, the container,
//! the process and each device in two tables, then the scope tree.

use std::fmt::Write as _;

use alloc_host::{ScopeTree, format_bytes as b};

use crate::info::{MemoryInfo, memory_info_untracked};

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), b)
}

/// The tables for `info` and, when given, the scope tree.
pub fn render_report(info: &MemoryInfo, scopes: Option<&ScopeTree>) -> String {
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
        let _ = writeln!(
            out,
            "\n{:<14} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>6} {:>5}",
            "device",
            "allocated",
            "peak alloc",
            "reserved",
            "peak rsvd",
            "cap",
            "free",
            "total",
            "effic",
            "ooms"
        );
        let _ = writeln!(out, "{}", "-".repeat(112));
        for d in &info.devices {
            let _ = writeln!(
                out,
                "{:<14} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>6.3} {:>5}",
                format!("{} ({})", d.name, d.backend),
                b(d.allocated),
                b(d.peak_allocated),
                b(d.reserved),
                b(d.peak_reserved),
                opt(d.limit),
                opt(d.free),
                opt(d.total),
                d.efficiency,
                d.num_ooms
            );
        }
    }
    if let Some(tree) = scopes {
        let _ = writeln!(out, "\n{}", tree.render());
    }
    out
}

/// [`render_report`] of the process now, scopes included.
pub fn report() -> String {
    let info = memory_info_untracked();
    alloc_host::untracked(|| render_report(&info, Some(&alloc_host::snapshot())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_a_row_per_part() {
        let text = render_report(&crate::memory_info(), None);
        for row in ["system", "process RSS", "tracked heap"] {
            assert!(
                text.lines().any(|l| l.starts_with(row)),
                "{row} missing:\n{text}"
            );
        }
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
        let text = render_report(&info, None);
        let header = text.lines().find(|l| l.starts_with("device ")).unwrap();
        let row = text.lines().find(|l| l.starts_with("gpu0 (sim)")).unwrap();
        assert_eq!(header.len(), row.len(), "\n{header}\n{row}");
        assert!(row.contains("1.00 GiB"), "the cap: {row}");
    }
}
