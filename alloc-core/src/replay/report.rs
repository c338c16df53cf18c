//! The readable report of replays: one table per trace, one row per config.

use std::fmt::Write as _;

use super::driver::ReplayResult;
use super::trace::TraceStats;

/// Bytes in MiB with one decimal, as the traces' README gives them.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The line that introduces a trace's table: its counts and peak.
pub fn trace_header(name: &str, stats: &TraceStats) -> String {
    let streams = stats.streams.len();
    format!(
        "{name}: {} allocs, {} frees, peak live {}, {streams} stream{}",
        stats.allocs,
        stats.frees,
        mib(stats.peak_live_bytes),
        if streams == 1 { "" } else { "s" }
    )
}

/// The column titles of the table, right-aligned after the config column.
const COLUMNS: [&str; 8] = [
    "peak requested",
    "peak reserved",
    "efficiency",
    "device allocs",
    "device frees",
    "driver calls (PyTorch >=)",
    "ns/op",
    "OOMs",
];

/// A table with one row per result (normally one trace under several
/// configs), followed by a line for each result whose allocations failed.
pub fn table(results: &[ReplayResult]) -> String {
    let rows: Vec<[String; 8]> = results
        .iter()
        .map(|r| {
            [
                mib(r.peak_requested_bytes),
                mib(r.peak_reserved_bytes),
                format!("{:.4}", r.efficiency),
                r.device_allocs.to_string(),
                r.device_frees.to_string(),
                format!(
                    "{} ({})",
                    r.driver_calls, r.pytorch_expandable_driver_calls_at_least
                ),
                format!("{:.1}", r.ns_per_op),
                r.ooms.to_string(),
            ]
        })
        .collect();
    let config_width = results
        .iter()
        .map(|r| r.config.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|c| {
            rows.iter()
                .map(|row| row[c].len())
                .chain([COLUMNS[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |config: &str, cells: &[&str]| {
        let _ = write!(out, "  {config:<config_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(out, "  {cell:>width$}");
        }
        out.push('\n');
    };
    line("config", &COLUMNS);
    for (r, row) in results.iter().zip(&rows) {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&r.config, &cells);
    }
    for r in results {
        if let Some(error) = &r.first_error {
            let failed = r.ooms + r.other_errors;
            let _ = writeln!(
                out,
                "  {}: {failed} allocations failed; the first: {error}",
                r.config
            );
        }
    }
    out
}
