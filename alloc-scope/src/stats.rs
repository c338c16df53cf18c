//! `ScopeStats`: a plain copy of one scope's figures, and the process-wide ones.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;

use super::clock::{self, Rate};
use super::counters::CounterValues;
use super::handle::name_of;
use super::record::{CLOSED, FREE};
use super::registry::{CAPACITY, FIXED, REGISTRY};
use super::thread;

/// Device-memory figures of a scope (bytes from the caching engine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceScopeStats {
    /// Device buffers handed out in this scope.
    pub allocations: u64,
    /// Device buffers of this scope given back.
    pub frees: u64,
    /// Total device bytes handed out.
    pub bytes_allocated: u64,
    /// Total device bytes given back.
    pub bytes_freed: u64,
    /// Device bytes in use now.
    pub live_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_bytes: u64,
    /// Device buffers in use now.
    pub live_allocations: u64,
}

/// One scope's figures, its nested scopes included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScopeStats {
    /// Registry id (slot and generation packed, see `ScopeId`).
    pub id: u64,
    /// The name it was opened with.
    pub name: String,
    /// Host allocations made.
    pub allocations: u64,
    /// Host frees of blocks this scope allocated.
    pub frees: u64,
    /// Reallocations of blocks this scope owns.
    pub reallocs: u64,
    /// Host bytes allocated (realloc growth included).
    pub bytes_allocated: u64,
    /// Host bytes freed (realloc shrinking included).
    pub bytes_freed: u64,
    /// Host bytes live now: `bytes_allocated - bytes_freed`.
    pub live_bytes: u64,
    /// Highest `live_bytes` seen (see the crate docs for how exact across threads).
    pub peak_bytes: u64,
    /// Host blocks live now: `allocations - frees`.
    pub live_allocations: u64,
    /// Device memory charged to this scope.
    pub device: DeviceScopeStats,
    /// How long the scope has been open (until its last handle dropped).
    pub wall_time: Duration,
    /// Whether a handle or guard still holds it.
    pub open: bool,
    /// Nesting depth (the process is 0).
    pub depth: u32,
    /// Hard host budget, bytes.
    pub hard_limit: Option<u64>,
    /// Soft host budget, bytes.
    pub soft_limit: Option<u64>,
    /// Highest live bytes seen above the soft limit, if it was exceeded.
    pub soft_limit_exceeded_at: Option<u64>,
    /// Allocations refused by the hard limit.
    pub refused_allocations: u64,
    /// Child scopes that closed and released all their memory.
    pub closed_children: u64,
    /// Highest host peak among those closed children.
    pub closed_children_peak_bytes: u64,
    /// Highest device peak among those closed children.
    pub closed_children_device_peak_bytes: u64,
}

fn nonneg(v: i64) -> u64 {
    v.max(0) as u64
}

fn opt(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

impl ScopeStats {
    pub(crate) fn read(slot: u32) -> ScopeStats {
        let Some(r) = REGISTRY.record(slot) else {
            return ScopeStats::default();
        };
        let h = r.host.0.read();
        let d = r.device.0.read();
        let m = &r.meta.0;
        let state = m.state.load(Relaxed);
        let opened = m.opened_at.load(Relaxed);
        let end = match state {
            CLOSED => m.closed_at.load(Relaxed),
            _ => clock::now(),
        };
        let generation = m.generation.load(Relaxed);
        ScopeStats {
            id: super::ScopeId::new(slot, generation).to_bits(),
            name: name_of(slot),
            allocations: h.allocations,
            frees: h.frees,
            reallocs: h.reallocs,
            bytes_allocated: h.bytes_allocated,
            bytes_freed: h.bytes_freed,
            live_bytes: nonneg(h.live_bytes),
            peak_bytes: nonneg(h.peak_bytes),
            live_allocations: h.allocations.saturating_sub(h.frees),
            device: device_stats(&d),
            wall_time: Duration::from_nanos(Rate::now().ns(end.saturating_sub(opened))),
            open: slot < FIXED || (state != CLOSED && state != FREE),
            depth: match slot {
                0 => 0,
                1 | 2 => 1,
                _ => m.depth.load(Relaxed),
            },
            hard_limit: opt(m.hard_limit.load(Relaxed)),
            soft_limit: opt(m.soft_limit.load(Relaxed)),
            soft_limit_exceeded_at: opt(m.soft_exceeded.load(Relaxed)),
            refused_allocations: m.refused.load(Relaxed),
            closed_children: m.closed_children.load(Relaxed),
            closed_children_peak_bytes: nonneg(m.closed_children_peak.load(Relaxed)),
            closed_children_device_peak_bytes: nonneg(m.closed_children_device_peak.load(Relaxed)),
        }
    }
}

fn device_stats(d: &CounterValues) -> DeviceScopeStats {
    DeviceScopeStats {
        allocations: d.allocations,
        frees: d.frees,
        bytes_allocated: d.bytes_allocated,
        bytes_freed: d.bytes_freed,
        live_bytes: nonneg(d.live_bytes),
        peak_bytes: nonneg(d.peak_bytes),
        live_allocations: d.allocations.saturating_sub(d.frees),
    }
}

/// Process-wide figures: every tracked host byte and every device byte charged
/// through a scope, whatever scope it is in. Flushes the calling thread first.
pub fn process_stats() -> ScopeStats {
    thread::flush();
    thread::untracked(|| ScopeStats::read(0))
}

/// Sets the peak of the process and of every scope to its current live bytes.
pub fn reset_peak() {
    thread::flush();
    for slot in 0..REGISTRY.high_water() {
        if let Some(r) = REGISTRY.record(slot) {
            r.host.0.reset_peak();
            r.device.0.reset_peak();
        }
    }
}

/// How full the scope registry is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegistryStats {
    /// Records in the registry (fixed ones included).
    pub capacity: usize,
    /// Records in use now: open scopes, and closed ones still owning memory.
    pub in_use: usize,
    /// Scopes that could not be created because every record held an open
    /// scope (their guards entered the parent instead).
    pub not_created: u64,
    /// Closed scopes whose record was recycled while they still owned memory
    /// (their live figures moved to `retired`).
    pub recycled: u64,
    /// Records looked at to find a record for a new scope when none was
    /// listed free (the cost of a full registry: about one per record
    /// recycled while closed scopes remain to recycle).
    pub examined: u64,
}

/// The registry's occupancy (for metrics: a server watching `not_created`).
pub fn registry_stats() -> RegistryStats {
    let mut in_use = 0;
    for slot in 0..REGISTRY.high_water() {
        if slot < FIXED
            || REGISTRY
                .record(slot)
                .is_some_and(|r| r.meta.0.state.load(Relaxed) != FREE)
        {
            in_use += 1;
        }
    }
    RegistryStats {
        capacity: CAPACITY,
        in_use,
        not_created: REGISTRY.dropped.load(Relaxed),
        recycled: REGISTRY.evicted.load(Relaxed),
        examined: REGISTRY.examined.load(Relaxed),
    }
}
