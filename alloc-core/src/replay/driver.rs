//! The replay driver: runs a [`Trace`] through a [`CachingAllocator`] and
//! measures what it reserved for what was requested, and how fast.

use std::time::Instant;

use serde::Serialize;

use super::trace::{Event, Trace};
use crate::backend::DeviceBackend;
use crate::buffer::DeviceBuffer;
use crate::cache::CachingAllocator;
use crate::error::AllocError;

/// The measurements of one trace replayed under one configuration.
///
/// Byte and count figures come from the engine's own statistics
/// ([`Stats`](crate::stats::Stats)), read after the last event and before the
/// buffers still live at the end are dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayResult {
    /// The trace's name (its file name).
    pub trace: String,
    /// The label of the configuration (the config string, or `default`).
    pub config: String,
    /// The backend's name (`sim`, `host`).
    pub backend: String,
    /// Allocate and free calls made.
    pub ops: u64,
    /// Highest requested bytes in use at once (the engine's
    /// `requested_bytes.all.peak`).
    pub peak_requested_bytes: u64,
    /// Highest bytes reserved from the backend at once
    /// (`reserved_bytes.all.peak`).
    pub peak_reserved_bytes: u64,
    /// `peak_requested_bytes / peak_reserved_bytes` (1.0 when nothing was
    /// reserved).
    pub efficiency: f64,
    /// Backend calls that obtained memory: segment allocations plus page maps
    /// of expandable segments (the engine's `num_device_alloc`).
    pub device_allocs: u64,
    /// Backend calls that gave memory back: segment frees plus page unmaps
    /// (`num_device_free`).
    pub device_frees: u64,
    /// Pages mapped in all (`num_pages_mapped`).
    pub pages_mapped: u64,
    /// The CUDA driver calls these allocations and maps make on this
    /// engine's CUDA backend, which maps every page with its own handle:
    /// one `cudaMalloc` per segment allocation; per map of n pages, n
    /// `cuMemCreate` + n `cuMemMap` + one `cuMemSetAccess`.
    pub driver_calls: u64,
    /// A lower bound on the same count for PyTorch's expandable segments
    /// ([`Trace::pytorch_expandable_map_calls_at_least`]).
    pub pytorch_expandable_driver_calls_at_least: u64,
    /// Of `device_allocs`: segment allocations.
    pub segment_allocs: u64,
    /// Of `device_allocs`: page map calls.
    pub page_maps: u64,
    /// Of `device_frees`: segment frees.
    pub segment_frees: u64,
    /// Of `device_frees`: page unmap calls.
    pub page_unmaps: u64,
    /// Wall time of the allocate and free calls divided by `ops`, in ns.
    pub ns_per_op: f64,
    /// Allocations that failed with out of memory.
    pub ooms: u64,
    /// Allocations that failed for another reason.
    pub other_errors: u64,
    /// The first failed allocation's error, if any.
    pub first_error: Option<String>,
    /// The trace's own peak of live requested bytes, computed from its events
    /// ([`TraceStats::peak_live_bytes`](super::TraceStats::peak_live_bytes));
    /// equals `peak_requested_bytes` when nothing failed.
    pub trace_peak_live_bytes: u64,
}

/// One event with its stream resolved, ready for the timed loop.
#[derive(Clone, Copy)]
enum Op<S> {
    Alloc {
        slot: usize,
        bytes: usize,
        stream: S,
    },
    Free {
        slot: usize,
    },
}

/// Replays `trace` through `allocator` and measures it; `config` labels the
/// result.
///
/// Use a fresh allocator: peaks and counts are the engine's totals, so they
/// include whatever it did before. The trace's streams are numbered in order
/// of first use (0, 1, ...) and given to the backend's
/// [`stream_for_id`](DeviceBackend::stream_for_id). Live buffers are held in a
/// `Vec` indexed by slot; the timed loop does only the allocate and free
/// calls and that bookkeeping. A failed allocation is counted (an OOM, or
/// another error) and its later free is skipped; the replay goes on.
pub fn replay<B: DeviceBackend>(
    trace: &Trace,
    allocator: &CachingAllocator<B>,
    config: &str,
) -> ReplayResult {
    let ops = resolve_streams(trace, allocator.backend());
    let mut live: Vec<Option<DeviceBuffer<'_, B>>> = Vec::with_capacity(trace.slots());
    live.resize_with(trace.slots(), || None);
    let mut failures = Failures::default();
    let mut done = 0u64;

    let start = Instant::now();
    for op in &ops {
        match *op {
            Op::Alloc {
                slot,
                bytes,
                stream,
            } => {
                done += 1;
                match allocator.allocate(bytes, stream) {
                    Ok(buffer) => live[slot] = Some(buffer),
                    Err(e) => failures.record(e),
                }
            }
            Op::Free { slot } => {
                if let Some(buffer) = live[slot].take() {
                    done += 1;
                    drop(buffer);
                }
            }
        }
    }
    let elapsed = start.elapsed();

    let stats = allocator.stats();
    drop(live);
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    // num_device_alloc counts segment allocations and map calls alike (as
    // PyTorch counts each map), num_device_map the map calls alone
    let (device_allocs, page_maps) = (count(stats.num_device_alloc), count(stats.num_device_map));
    let (device_frees, page_unmaps) = (count(stats.num_device_free), count(stats.num_device_unmap));
    let (segment_allocs, segment_frees) = (
        device_allocs.saturating_sub(page_maps),
        device_frees.saturating_sub(page_unmaps),
    );
    let pages_mapped = count(stats.num_pages_mapped);
    ReplayResult {
        trace: trace.name().to_owned(),
        config: config.to_owned(),
        backend: allocator.backend().name().to_owned(),
        ops: done,
        peak_requested_bytes: count(stats.requested_bytes.all.peak),
        peak_reserved_bytes: count(stats.reserved_bytes.all.peak),
        efficiency: stats.efficiency(),
        device_allocs,
        device_frees,
        pages_mapped,
        driver_calls: segment_allocs + 2 * pages_mapped + page_maps,
        pytorch_expandable_driver_calls_at_least: trace.pytorch_expandable_map_calls_at_least(),
        segment_allocs,
        page_maps,
        segment_frees,
        page_unmaps,
        ns_per_op: if done == 0 {
            0.0
        } else {
            elapsed.as_nanos() as f64 / done as f64
        },
        ooms: failures.ooms,
        other_errors: failures.others,
        first_error: failures.first,
        trace_peak_live_bytes: trace.stats().peak_live_bytes,
    }
}

/// Failed allocations seen during a replay.
#[derive(Default)]
struct Failures {
    ooms: u64,
    others: u64,
    first: Option<String>,
}

impl Failures {
    #[cold]
    fn record(&mut self, error: AllocError) {
        if error.as_oom().is_some() {
            self.ooms += 1;
        } else {
            self.others += 1;
        }
        self.first.get_or_insert_with(|| error.to_string());
    }
}

/// The trace's events with each stream mapped to the backend's stream for
/// its number in order of first use.
fn resolve_streams<B: DeviceBackend>(trace: &Trace, backend: &B) -> Vec<Op<B::Stream>> {
    let mut seen: Vec<(u64, B::Stream)> = Vec::new();
    let mut stream_of = |raw: u64| -> B::Stream {
        if let Some(&(_, s)) = seen.iter().find(|(r, _)| *r == raw) {
            return s;
        }
        let id = u32::try_from(seen.len()).unwrap_or(u32::MAX);
        let s = backend.stream_for_id(id);
        seen.push((raw, s));
        s
    };
    trace
        .events()
        .iter()
        .map(|event| match *event {
            Event::Alloc {
                slot,
                bytes,
                stream,
            } => Op::Alloc {
                slot,
                bytes,
                stream: stream_of(stream),
            },
            Event::Free { slot } => Op::Free { slot },
        })
        .collect()
}
