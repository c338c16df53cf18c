//! A snapshot of every segment and block with its state: as JSON in this
//! crate's shape ([`Snapshot`]), and as the pickle that PyTorch's
//! `torch.cuda.memory._dump_snapshot` writes
//! ([`dump_snapshot`](CachingAllocator::dump_snapshot), see `torch.rs`), which
//! PyTorch's `_memory_viz.py` and its MemoryViz page open.

mod pickle;
mod torch;

use crate::backend::DeviceBackend;
use crate::block::BlockState;
use crate::cache::CachingAllocator;
use crate::size_class::Pool;
use crate::stats::Stats;
use crate::streams::Slot;

/// The `stream` of blocks and segments that belonged to streams since
/// forgotten ([`forget_stream`](CachingAllocator::forget_stream)).
pub const FORGOTTEN_STREAMS: &str = "forgotten streams";

/// One block of a segment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlockSnapshot {
    /// Start address.
    pub address: usize,
    /// Bytes.
    pub size: usize,
    /// Bytes the user asked for (0 unless in use or pending).
    pub requested_size: usize,
    /// Free, in use, pending or unmapped.
    pub state: BlockState,
    /// The block's stream, as its `Debug` text.
    pub stream: String,
    /// The block's stream slot (order of first use, from 0).
    pub stream_slot: u64,
    /// The name of the scope the block was allocated in, for blocks in use or
    /// pending that were handed out while history was recorded
    /// ([`record_memory_history`](CachingAllocator::record_memory_history)).
    pub scope: Option<String>,
}

/// One segment with its blocks in address order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SegmentSnapshot {
    /// Base address.
    pub address: usize,
    /// Bytes of the allocation or reservation.
    pub total_size: usize,
    /// Bytes held from the backend.
    pub mapped_size: usize,
    /// `small_pool` or `large_pool`.
    pub pool: Pool,
    /// Whether this is an expandable segment.
    pub expandable: bool,
    /// The stream it was created for, as its `Debug` text.
    pub stream: String,
    /// The stream slot it was created for (order of first use, from 0).
    pub stream_slot: u64,
    /// Its blocks.
    pub blocks: Vec<BlockSnapshot>,
}

/// Every segment and the statistics at one moment.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// The backend's name.
    pub backend: String,
    /// The segments, by address.
    pub segments: Vec<SegmentSnapshot>,
    /// The statistics.
    pub stats: Stats,
}

impl Snapshot {
    /// The snapshot as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

impl<B: DeviceBackend> CachingAllocator<B> {
    /// A snapshot of every segment and block.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock_drained();
        let stream = |slot: Slot| {
            if st.streams.orphan() == Some(slot) {
                return FORGOTTEN_STREAMS.to_string();
            }
            st.streams
                .handle(slot)
                .map_or_else(String::new, |s| format!("{s:?}"))
        };
        let mut segments: Vec<SegmentSnapshot> = st
            .segs
            .iter()
            .map(|(_, seg)| {
                let mut blocks = Vec::new();
                for b in st.blocks.chain(seg.head) {
                    let scope = (b.scope != crate::block::NO_SCOPE).then(|| {
                        let s = crate::scope::ScopeId::from_bits(b.scope);
                        st.trace
                            .scope_name(s)
                            .map_or_else(|| torch::fallback_name(s), str::to_owned)
                    });
                    blocks.push(BlockSnapshot {
                        address: b.ptr,
                        size: b.size,
                        requested_size: b.requested,
                        state: b.state,
                        stream: stream(b.stream),
                        stream_slot: u64::from(b.stream),
                        scope,
                    });
                }
                SegmentSnapshot {
                    address: seg.base,
                    total_size: seg.size,
                    mapped_size: seg.mapped,
                    pool: seg.pool,
                    expandable: seg.kind.is_expandable(),
                    stream: stream(seg.stream),
                    stream_slot: u64::from(seg.stream),
                    blocks,
                }
            })
            .collect();
        segments.sort_by_key(|s| s.address);
        Snapshot {
            backend: self.backend.name().to_string(),
            segments,
            stats: st.stats,
        }
    }
}
