//! The snapshot in PyTorch's shape: the dict `torch.cuda.memory._snapshot()`
//! returns and `_dump_snapshot` pickles, with the keys PyTorch's
//! `_memory_viz.py` (`stats`, `trace`, `segments`, `memory`, `trace_plot`,
//! `segment_plot`) and its MemoryViz page read:
//!
//! ```text
//! {"segments": [{"device", "address", "total_size", "allocated_size",
//!                "active_size", "requested_size", "stream", "segment_type",
//!                "segment_pool_id", "is_expandable", "frames",
//!                "blocks": [{"address", "size", "requested_size", "state",
//!                            "frames"}]}],
//!  "device_traces": [[{"action", "addr" | "device_free", "size", "stream",
//!                      "time_us", "frames", "user_metadata"}]],
//!  "allocator_settings": {...}, "external_annotations": []}
//! ```
//!
//! Mapping from this engine:
//! - a fixed segment is one segment; an expandable segment is one segment per
//!   run of mapped pages (as PyTorch reports its expandable segments);
//! - `stream` is the stream's slot (0 for the first stream used);
//! - block `state`: in use → `active_allocated`, pending (freed, waiting for
//!   events of other streams) → `active_pending_free`, free → `inactive`;
//! - `frames` name the scope that was current when the block was allocated, as
//!   one frame `{"name": <scope name>, "filename": "scope", "line": 0}` (so
//!   `_memory_viz.py` shows `scope:0:<scope name>`); trace entries carry the
//!   same name in `user_metadata`. A block handed out while history is
//!   recorded (turn it on with
//!   [`record_memory_history`](CachingAllocator::record_memory_history))
//!   keeps its scope for as long as it lives, however many events the ring
//!   has dropped since (as PyTorch keeps a block's allocation context).

use std::collections::HashMap;
use std::path::Path;

use super::pickle::{self, Py};
use super::{SegmentSnapshot, Snapshot};
use crate::backend::DeviceBackend;
use crate::block::BlockState;
use crate::cache::CachingAllocator;
use crate::config::{Config, MAX_TRACE_ENTRIES};
use crate::scope::ScopeId;
use crate::size_class::{Pool, ROUNDUP_INTERVALS};
use crate::trace::{TraceAction, TraceEntry};

/// The `filename` of the frame that names a scope.
pub const SCOPE_FRAME_FILENAME: &str = "scope";

impl<B: DeviceBackend> CachingAllocator<B> {
    /// Starts (`enabled`) or stops recording the allocation history that a
    /// snapshot's `device_traces` show, keeping the last `max_entries` events
    /// (at most [`MAX_TRACE_ENTRIES`]), like PyTorch's
    /// `torch.cuda.memory._record_memory_history(enabled, max_entries=...)`.
    /// Stopping keeps what was recorded; starting again resizes the ring.
    /// Same ring as [`trace`](Self::trace) and `trace_buffer_entries`.
    pub fn record_memory_history(&self, enabled: bool, max_entries: usize) {
        let mut st = self.lock_drained();
        st.trace
            .set_recording(enabled, max_entries.min(MAX_TRACE_ENTRIES));
        // a hit records no trace event: the front cache is off while
        // history is recorded (drained just above)
        self.front.set_on(!st.trace.is_on());
    }

    /// The snapshot pickled as `torch.cuda.memory._dump_snapshot` writes it
    /// (see the module docs for the keys). Records a `snapshot` trace entry
    /// first when history is on.
    pub fn snapshot_pickle(&self) -> Vec<u8> {
        pickle::to_vec(&self.torch_dict())
    }

    /// Writes [`snapshot_pickle`](Self::snapshot_pickle) to `path`: a file
    /// that `python -m torch.cuda._memory_viz stats|trace|segments FILE` and
    /// the MemoryViz page (pytorch.org/memory_viz) open.
    pub fn dump_snapshot(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.snapshot_pickle())
    }

    /// The memory snapshot as the dict PyTorch's `_snapshot()` returns.
    fn torch_dict(&self) -> Py {
        let (entries, names) = {
            let mut st = self.lock_drained();
            st.trace.push(TraceAction::Snapshot, 0, 0, 0);
            let entries = st.trace.entries();
            let mut names: HashMap<u64, String> = HashMap::new();
            for e in &entries {
                names.entry(e.scope.to_bits()).or_insert_with(|| {
                    st.trace
                        .scope_name(e.scope)
                        .map_or_else(|| fallback_name(e.scope), str::to_owned)
                });
            }
            (entries, names)
        };
        let snap = self.snapshot();
        let frames = Frames::new(&entries, &names);
        Py::Dict(vec![
            ("segments", Py::List(torch_segments(&snap, &frames))),
            (
                "device_traces",
                Py::List(vec![Py::List(
                    entries.iter().map(|e| trace_entry(e, &frames)).collect(),
                )]),
            ),
            (
                "allocator_settings",
                allocator_settings(&self.config, self.uses_expandable_segments()),
            ),
            ("external_annotations", Py::List(Vec::new())),
        ])
    }
}

/// A scope's name when the trace did not capture it (never expected).
pub(super) fn fallback_name(scope: ScopeId) -> String {
    format!("scope#{}", scope.slot())
}

/// Scope names, and which scope mapped each segment, from the trace history
/// (blocks carry their own scope).
struct Frames<'a> {
    names: &'a HashMap<u64, String>,
    /// Scope of the latest `segment_alloc` / `segment_map` at each address.
    segment_at: HashMap<usize, ScopeId>,
}

impl<'a> Frames<'a> {
    fn new(entries: &[TraceEntry], names: &'a HashMap<u64, String>) -> Self {
        let mut segment_at = HashMap::new();
        for e in entries {
            if matches!(e.action, TraceAction::SegmentAlloc | TraceAction::Map) {
                segment_at.insert(e.addr, e.scope);
            }
        }
        Frames { names, segment_at }
    }

    fn name(&self, scope: ScopeId) -> String {
        self.names
            .get(&scope.to_bits())
            .cloned()
            .unwrap_or_else(|| fallback_name(scope))
    }

    fn of(&self, scope: Option<ScopeId>) -> Py {
        Py::List(scope.map_or_else(Vec::new, |s| vec![scope_frame(&self.name(s))]))
    }
}

/// The frame that names a scope.
fn scope_frame(name: &str) -> Py {
    Py::Dict(vec![
        ("filename", Py::str(SCOPE_FRAME_FILENAME)),
        ("line", Py::int(0)),
        ("name", Py::str(name)),
    ])
}

fn state_name(s: BlockState) -> &'static str {
    match s {
        BlockState::InUse => "active_allocated",
        BlockState::Pending => "active_pending_free",
        BlockState::Free | BlockState::Unmapped => "inactive",
    }
}

/// One PyTorch segment per fixed segment, one per mapped run of an
/// expandable segment.
fn torch_segments(snap: &Snapshot, frames: &Frames<'_>) -> Vec<Py> {
    let mut out = Vec::new();
    for seg in &snap.segments {
        let mut run = Vec::new();
        for (i, b) in seg.blocks.iter().enumerate() {
            if b.state != BlockState::Unmapped {
                run.push(i);
            }
            let last = i + 1 == seg.blocks.len();
            if (b.state == BlockState::Unmapped || last) && !run.is_empty() {
                out.push(torch_segment(seg, &run, frames));
                run.clear();
            }
        }
    }
    out
}

fn torch_segment(seg: &SegmentSnapshot, run: &[usize], frames: &Frames<'_>) -> Py {
    let blocks: Vec<_> = run.iter().map(|&i| &seg.blocks[i]).collect();
    let address = blocks.first().map_or(seg.address, |b| b.address);
    let sum =
        |f: &dyn Fn(&super::BlockSnapshot) -> usize| -> usize { blocks.iter().map(|b| f(b)).sum() };
    let total = sum(&|b| b.size);
    let allocated = sum(&|b| {
        if b.state == BlockState::InUse {
            b.size
        } else {
            0
        }
    });
    let active = sum(&|b| match b.state {
        BlockState::InUse | BlockState::Pending => b.size,
        _ => 0,
    });
    let requested = sum(&|b| b.requested_size);
    let block_dicts = blocks
        .iter()
        .map(|b| {
            let live = matches!(b.state, BlockState::InUse | BlockState::Pending);
            // the scope kept with the block; none when it was handed out
            // while history was off (the ring then holds no alloc of it,
            // only maybe an older one at the same address)
            let block_frames = match (&b.scope, live) {
                (Some(name), true) => Py::List(vec![scope_frame(name)]),
                _ => Py::List(Vec::new()),
            };
            Py::Dict(vec![
                ("address", Py::int(b.address as u64)),
                ("size", Py::int(b.size as u64)),
                ("requested_size", Py::int(b.requested_size as u64)),
                ("state", Py::str(state_name(b.state))),
                ("frames", block_frames),
            ])
        })
        .collect();
    Py::Dict(vec![
        ("device", Py::int(0)),
        ("address", Py::int(address as u64)),
        ("total_size", Py::int(total as u64)),
        ("allocated_size", Py::int(allocated as u64)),
        ("active_size", Py::int(active as u64)),
        ("requested_size", Py::int(requested as u64)),
        ("stream", Py::int(seg.stream_slot)),
        (
            "segment_type",
            Py::str(match seg.pool {
                Pool::Small => "small",
                Pool::Large => "large",
            }),
        ),
        ("segment_pool_id", Py::Tuple(vec![Py::int(0), Py::int(0)])),
        ("is_expandable", Py::Bool(seg.expandable)),
        (
            "frames",
            frames.of(frames.segment_at.get(&address).copied()),
        ),
        ("blocks", Py::List(block_dicts)),
    ])
}

fn trace_entry(e: &TraceEntry, frames: &Frames<'_>) -> Py {
    let name = frames.name(e.scope);
    let where_key = if e.action == TraceAction::Oom {
        "device_free"
    } else {
        "addr"
    };
    Py::Dict(vec![
        ("action", Py::str(e.action.torch_name())),
        (where_key, Py::int(e.addr as u64)),
        ("size", Py::int(e.size as u64)),
        ("stream", Py::int(e.stream)),
        ("time_us", Py::int(e.time_us)),
        ("frames", Py::List(vec![scope_frame(&name)])),
        ("user_metadata", Py::Str(name)),
    ])
}

/// `allocator_settings` with PyTorch's keys, from the config.
fn allocator_settings(c: &Config, expandable: bool) -> Py {
    let mut roundup = Vec::with_capacity(ROUNDUP_INTERVALS);
    for (i, d) in c.roundup_power2_divisions.iter().enumerate() {
        roundup.push(((1u64 << i).to_string(), Py::int(*d)));
    }
    Py::Dict(vec![
        ("PYTORCH_CUDA_ALLOC_CONF", Py::Str(c.to_conf_string())),
        // PyTorch writes its size_t as int64: "no limit" (SIZE_MAX) reads -1.
        ("max_split_size", Py::int(c.max_split_size as u64 as i64)),
        (
            "garbage_collection_threshold",
            Py::Float(c.garbage_collection_threshold.unwrap_or(0.0)),
        ),
        ("expandable_segments", Py::Bool(expandable)),
        (
            "pinned_num_register_threads",
            Py::int(c.pinned_num_register_threads as u64),
        ),
        (
            "release_lock_on_cudamalloc",
            Py::Bool(c.release_lock_on_device_alloc),
        ),
        (
            "pinned_use_cuda_host_register",
            Py::Bool(c.pinned_use_host_register),
        ),
        (
            "graph_capture_record_stream_reuse",
            Py::Bool(c.graph_capture_record_stream_reuse),
        ),
        ("roundup_power2_divisions", Py::DictOwned(roundup)),
    ])
}
