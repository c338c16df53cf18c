//! The scope tree as a serde value ([`ScopeTree`]) and as a table a person reads at a glance.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use serde::Serialize;

use super::record::FREE;
use super::registry::{CAPACITY, REGISTRY};
use super::stats::ScopeStats;
use super::thread;

/// One scope in a [`ScopeTree`].
#[derive(Clone, Debug, Serialize)]
pub struct ScopeNode {
    /// Its figures.
    pub stats: ScopeStats,
    /// Parent's `stats.id`; `None` for the process.
    pub parent: Option<u64>,
}

/// Every scope that is open or still owns memory, parents before children.
#[derive(Clone, Debug, Serialize)]
pub struct ScopeTree {
    /// The scopes, depth-first from the process root.
    pub scopes: Vec<ScopeNode>,
    /// Scopes not created because the registry was full (their charges went to
    /// their parent).
    pub scopes_not_created: u64,
    /// Registry capacity.
    pub capacity: usize,
}

/// Takes a consistent-enough copy of the scope tree (each scope is read
/// atomically field by field; scopes changing meanwhile may differ by the
/// batching bound). Flushes the calling thread first.
pub fn scope_tree() -> ScopeTree {
    thread::untracked(snapshot_untracked)
}

fn snapshot_untracked() -> ScopeTree {
    let mut nodes: Vec<(u32, Option<u32>, ScopeStats)> = Vec::new();
    for slot in 0..REGISTRY.high_water() {
        let Some(r) = REGISTRY.record(slot) else {
            continue;
        };
        let generation = r.meta.0.generation.load(Acquire);
        if slot >= super::registry::FIXED && r.meta.0.state.load(Acquire) == FREE {
            continue;
        }
        let stats = ScopeStats::read(slot);
        if r.meta.0.generation.load(Relaxed) != generation {
            continue;
        }
        nodes.push((slot, REGISTRY.parent(slot), stats));
    }
    // Depth-first from the root, children in slot order: one pass to index
    // the nodes by slot and list each parent's children, then a walk.
    let mut by_slot: HashMap<u32, (Option<u32>, ScopeStats)> = HashMap::with_capacity(nodes.len());
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (slot, parent, stats) in nodes {
        if let Some(p) = parent {
            children.entry(p).or_default().push(slot);
        }
        by_slot.insert(slot, (parent, stats));
    }
    let mut ids: HashMap<u32, u64> = HashMap::with_capacity(by_slot.len());
    let mut ordered = Vec::with_capacity(by_slot.len());
    let mut stack = vec![0u32];
    while let Some(slot) = stack.pop() {
        let Some((parent, stats)) = by_slot.remove(&slot) else {
            continue;
        };
        ids.insert(slot, stats.id);
        let parent = parent.and_then(|p| ids.get(&p).copied());
        ordered.push(ScopeNode { stats, parent });
        if let Some(kids) = children.get_mut(&slot) {
            kids.sort_unstable_by(|a, b| b.cmp(a));
            stack.extend(kids.iter().copied());
        }
    }
    ScopeTree {
        scopes: ordered,
        scopes_not_created: REGISTRY.dropped.load(Relaxed),
        capacity: CAPACITY,
    }
}

/// Formats bytes with a binary unit: `512 B`, `1.50 KiB`, `3.20 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

fn format_duration(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

impl ScopeTree {
    /// The table: one row per scope, indented by depth; device columns appear
    /// when any device memory was charged.
    pub fn render(&self) -> String {
        let device = self.scopes.iter().any(|n| n.stats.device.allocations > 0);
        let mut out = String::new();
        let _ = write!(
            out,
            "{:<32} {:>11} {:>11} {:>11} {:>10} {:>10} {:>9}",
            "scope", "live", "peak", "allocated", "allocs", "frees", "reallocs"
        );
        if device {
            let _ = write!(out, " {:>11} {:>11}", "dev live", "dev peak");
        }
        let _ = writeln!(out, " {:>10}", "time");
        for n in &self.scopes {
            let s = &n.stats;
            let indent = "  ".repeat(s.depth as usize);
            let mut label = format!("{indent}{}", s.name);
            if !s.open {
                label.push_str(" (closed)");
            }
            let _ = write!(
                out,
                "{:<32} {:>11} {:>11} {:>11} {:>10} {:>10} {:>9}",
                truncate(&label, 32),
                format_bytes(s.live_bytes),
                format_bytes(s.peak_bytes),
                format_bytes(s.bytes_allocated),
                s.allocations,
                s.frees,
                s.reallocs
            );
            if device {
                let _ = write!(
                    out,
                    " {:>11} {:>11}",
                    format_bytes(s.device.live_bytes),
                    format_bytes(s.device.peak_bytes)
                );
            }
            let _ = writeln!(out, " {:>10}", format_duration(s.wall_time));
            if s.closed_children > 0 {
                let _ = writeln!(
                    out,
                    "{:<32} {:>11} {:>11}  (highest peak among {} closed child scopes)",
                    truncate(&format!("{indent}  [closed children]"), 32),
                    "",
                    format_bytes(s.closed_children_peak_bytes),
                    s.closed_children
                );
            }
            for (what, v) in [("hard limit", s.hard_limit), ("soft limit", s.soft_limit)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "{indent}  {what}: {}", format_bytes(v));
                }
            }
            if let Some(v) = s.soft_limit_exceeded_at {
                let _ = writeln!(
                    out,
                    "{indent}  soft limit exceeded: reached {}",
                    format_bytes(v)
                );
            }
            if s.refused_allocations > 0 {
                let _ = writeln!(
                    out,
                    "{indent}  {} allocations refused by the hard limit",
                    s.refused_allocations
                );
            }
        }
        if self.scopes_not_created > 0 {
            let _ = writeln!(
                out,
                "{} scopes were not created (all {} slots in use); their memory is charged to their parents",
                self.scopes_not_created, self.capacity
            );
        }
        out
    }
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

/// [`scope_tree`] rendered as a table.
pub fn report() -> String {
    thread::untracked(|| scope_tree().render())
}

/// Runs `f` on the name of scope `id` while that scope still holds its slot
/// (`None` once it was recycled, and for [`ScopeId::UNTRACKED`](crate::ScopeId::UNTRACKED)).
/// Takes no lock and does not allocate: the host allocator's sampler calls it
/// from inside an allocation.
pub fn with_scope_name<R>(id: crate::ScopeId, f: impl FnOnce(&str) -> R) -> Option<R> {
    if !id.is_tracked() {
        return None;
    }
    let r = REGISTRY.record(id.slot())?;
    if !REGISTRY.is_live(id.slot(), id.generation()) {
        return None;
    }
    Some(r.name.0.with_str(f))
}

#[cfg(test)]
mod tests {
    use super::format_bytes;

    #[test]
    fn bytes_are_formatted_with_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(5 << 30), "5.00 GiB");
    }
}
