//! [`CachingAllocator`]: the block-caching engine. The fast path (best fit in
//! the free index of the request's stream and pool, split, hand out) lives
//! here; growing, reclaiming and out-of-memory are in `reclaim.rs`.
//!
//! # Type map
//! | word | type |
//! |---|---|
//! | segment | memory held from the backend: one allocation, or an expandable reservation (`segment.rs`) |
//! | block | a free, in-use, pending or unmapped sub-range of a segment (`block.rs`) |
//! | pool | small (≤ 1 MiB) or large blocks ([`Pool`]) |
//! | stream | the backend's queue of work; each block belongs to one |
//! | reserved / in use / cached | held from the backend / handed out / reserved − in use ([`Stats`]) |
//! | release | give memory back to the backend (`empty_cache`, `trim`, the reclaim ladder) |
//!
//! # Invariants
//! - T1 `allocated_bytes` = Σ in-use block sizes; `active_bytes` = Σ in-use and
//!   pending block sizes; `requested_bytes` = Σ requested bytes of in-use
//!   blocks; `reserved_bytes` = Σ mapped bytes of segments.
//! - T2 `inactive_split` counts the free blocks that share their segment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::backend::{DeviceBackend, DevicePtr};
use crate::block::{Block, BlockId, BlockSlab, BlockState, NIL};
use crate::buffer::DeviceBuffer;
use crate::config::Config;
use crate::error::{AllocError, OutOfMemory};
use crate::free_index::{FreeIndex, Key, Verdict};
use crate::segment::SegmentTable;
use crate::size_class::{MIN_BLOCK, Pool, SMALL_SIZE, round_size};
use crate::stats::Stats;
use crate::trace::{TraceAction, TraceEntry, TraceRing};

/// A callback run (outside the engine's lock) when an allocation fails with
/// out of memory.
pub type OomObserver = Arc<dyn Fn(&OutOfMemory) + Send + Sync>;

/// A free block frees its remainder when at least this much is left over in a
/// fixed large-pool segment (PyTorch's rule; small-pool and expandable blocks
/// split down to [`MIN_BLOCK`]).
pub const LARGE_SPLIT_REMAINDER: usize = SMALL_SIZE;

/// A free waiting for events recorded on the streams that used the block.
pub(crate) struct PendingFree<E> {
    pub(crate) block: BlockId,
    pub(crate) events: Vec<E>,
    /// An event could not be recorded: only a device-wide sync frees it.
    pub(crate) needs_sync: bool,
}

/// The engine state behind the lock.
pub(crate) struct State<B: DeviceBackend> {
    pub(crate) blocks: BlockSlab,
    pub(crate) segs: SegmentTable,
    /// Stream of each slot (slots in order of first use).
    pub(crate) streams: Vec<B::Stream>,
    pub(crate) index: FreeIndex,
    /// Expandable segment of each (stream slot, pool), `u32::MAX` if none.
    pub(crate) expandable: Vec<u32>,
    pub(crate) pending: Vec<PendingFree<B::Event>>,
    /// Other streams (slots) that used an in-use block (`record_stream`).
    pub(crate) uses: HashMap<BlockId, Vec<u16>>,
    pub(crate) stats: Stats,
    pub(crate) trace: TraceRing,
    /// Cap on reserved bytes (memory fraction / byte cap).
    pub(crate) limit: Option<usize>,
}

/// The block-caching device allocator, generic over its backend.
///
/// `Send + Sync`: one mutex guards the pools and the statistics, so the
/// statistics are exact.
pub struct CachingAllocator<B: DeviceBackend> {
    pub(crate) backend: B,
    pub(crate) config: Config,
    /// Expandable segments are in use (configured and supported).
    pub(crate) expandable: bool,
    /// Page size of expandable segments.
    pub(crate) page: usize,
    pub(crate) state: Mutex<State<B>>,
    pub(crate) observers: RwLock<Vec<OomObserver>>,
}

impl<B: DeviceBackend> CachingAllocator<B> {
    /// An engine drawing from `backend` with `config`. Expandable segments are
    /// used when the config asks for them (or leaves them to the default) and
    /// the backend can map pages.
    pub fn new(backend: B, config: Config) -> Self {
        let page = backend
            .page_size()
            .filter(|p| p.is_power_of_two() && *p >= MIN_BLOCK);
        let expandable = page.is_some() && config.expandable_segments.unwrap_or(true);
        let limit = compute_limit(&config, backend.mem_info().map(|m| m.total));
        let state = State {
            blocks: BlockSlab::default(),
            segs: SegmentTable::default(),
            streams: Vec::new(),
            index: FreeIndex::default(),
            expandable: Vec::new(),
            pending: Vec::new(),
            uses: HashMap::new(),
            stats: Stats::default(),
            trace: TraceRing::new(config.trace_entries),
            limit,
        };
        CachingAllocator {
            backend,
            config,
            expandable,
            page: page.unwrap_or(crate::size_class::ROUND_LARGE),
            state: Mutex::new(state),
            observers: RwLock::new(Vec::new()),
        }
    }

    /// An engine configured from the env var [`ALLOC_CONF`](crate::config::ENV_VAR).
    pub fn from_env(backend: B) -> Result<Self, crate::config::ConfigError> {
        Ok(Self::new(backend, Config::from_env()?))
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this engine uses expandable segments.
    pub fn uses_expandable_segments(&self) -> bool {
        self.expandable
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A panic while holding the lock is an engine bug; the state is still
        // the best information there is, so keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `bytes` bytes for use on `stream`.
    #[inline]
    pub fn allocate(
        &self,
        bytes: usize,
        stream: B::Stream,
    ) -> Result<DeviceBuffer<'_, B>, AllocError> {
        let rounded = round_size(bytes, &self.config.roundup_power2_divisions).ok_or(
            AllocError::TooLarge {
                requested: bytes,
                max: usize::MAX - MIN_BLOCK,
            },
        )?;
        let pool = Pool::of(rounded);
        let mut st = self.lock();
        let slot = st.stream_slot(stream);
        if !st.pending.is_empty() {
            st.process_pending(&self.backend, false);
        }
        let id = match st.take_fit(slot, pool, rounded, self.config.max_split_size) {
            Some(id) => id,
            None => match self.alloc_slow(&mut st, slot, pool, bytes, rounded) {
                Ok(id) => id,
                Err(e) => {
                    drop(st);
                    self.notify_oom(&e);
                    return Err(e);
                }
            },
        };
        let expandable = self.expandable_seg(&st, id);
        let (ptr, size) = st.hand_out(id, rounded, bytes, self.config.max_split_size, expandable);
        drop(st);
        let owner = crate::scope::charge_device_alloc(size as u64);
        Ok(DeviceBuffer {
            alloc: self,
            block: id,
            ptr: DevicePtr(ptr),
            size,
            requested: bytes,
            stream,
            owner,
        })
    }

    #[inline]
    fn expandable_seg(&self, st: &State<B>, id: BlockId) -> bool {
        st.blocks.at(id).expandable
    }

    /// Returns block `id` (a dropped buffer) to the cache.
    pub(crate) fn free_block(&self, id: BlockId) {
        let mut st = self.lock();
        let (ptr, size, pool, slot, requested) = {
            let b = st.blocks.at(id);
            let pool = st.pool_of(b);
            (b.ptr, b.size, pool, b.stream, b.requested)
        };
        st.stats.allocation.sub(pool, 1);
        st.stats.allocated_bytes.sub(pool, size);
        st.stats.requested_bytes.sub(pool, requested);
        st.trace.push(TraceAction::FreeRequested, ptr, size, slot);
        let uses = if st.uses.is_empty() {
            None
        } else {
            st.uses.remove(&id)
        };
        match uses {
            Some(streams) => st.defer_free(&self.backend, id, streams),
            None => {
                st.complete_free(id);
            }
        }
    }

    /// Notes that block `id` (allocated on `own`) is used on `stream`.
    pub(crate) fn record_stream(&self, id: BlockId, own: B::Stream, stream: B::Stream) {
        if stream == own {
            return;
        }
        let mut st = self.lock();
        let slot = st.stream_slot(stream);
        let uses = st.uses.entry(id).or_default();
        if !uses.contains(&slot) {
            uses.push(slot);
        }
    }

    /// Registers a callback run when an allocation fails with out of memory
    /// (outside the engine's lock, so it may call the engine).
    pub fn add_oom_observer(&self, f: impl Fn(&OutOfMemory) + Send + Sync + 'static) {
        self.observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(f));
    }

    fn notify_oom(&self, e: &AllocError) {
        let Some(oom) = e.as_oom() else { return };
        let observers = self
            .observers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for f in observers {
            f(oom);
        }
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// Sets every peak to its current value.
    pub fn reset_peak(&self) {
        self.lock().stats.reset_peak();
    }

    /// Zeroes the accumulated totals and event counters.
    pub fn reset_accumulated(&self) {
        self.lock().stats.reset_accumulated();
    }

    /// A `torch.cuda.memory_summary()`-style table.
    pub fn memory_summary(&self) -> String {
        let st = self.lock();
        format!(
            "{} allocator ({} segments{})\n{}",
            self.backend.name(),
            if self.expandable {
                "expandable"
            } else {
                "fixed"
            },
            match st.limit {
                Some(l) => format!(", cap {}", crate::stats::format_size(l)),
                None => String::new(),
            },
            st.stats.summary()
        )
    }

    /// The trace ring buffer's entries, oldest first (empty when off).
    pub fn trace(&self) -> Vec<TraceEntry> {
        self.lock().trace.entries()
    }

    /// Caps reserved memory at `fraction` of the device total (where the
    /// backend knows it). Returns the cap in bytes.
    pub fn set_memory_fraction(&self, fraction: f64) -> Option<usize> {
        let total = self.backend.mem_info().map(|m| m.total)?;
        let mut cfg = self.config.clone();
        cfg.memory_fraction = Some(fraction.clamp(0.0, 1.0));
        let limit = compute_limit(&cfg, Some(total));
        self.lock().limit = limit;
        limit
    }
}

/// Whether free block `key` may serve `rounded` bytes of `pool`: the
/// oversize rule of fixed segments (below `max_split` only blocks below it;
/// at or above, only blocks at most one large segment bigger). Blocks of
/// expandable segments always fit.
#[inline]
fn fit_verdict(
    blocks: &BlockSlab,
    pool: Pool,
    rounded: usize,
    max_split: usize,
    key: &Key,
) -> Verdict {
    let (size, _, id) = *key;
    if pool == Pool::Small || size < max_split && rounded < max_split || blocks.at(id).expandable {
        return Verdict::Take;
    }
    if rounded < max_split {
        return if size < max_split {
            Verdict::Take
        } else {
            Verdict::Skip
        };
    }
    if size <= rounded.saturating_add(crate::size_class::LARGE_SEGMENT) {
        Verdict::Take
    } else {
        Verdict::Stop
    }
}

/// The cap on reserved bytes from the memory fraction and the byte cap.
fn compute_limit(config: &Config, total: Option<usize>) -> Option<usize> {
    let by_fraction = match (config.memory_fraction, total) {
        (Some(f), Some(t)) => Some((t as f64 * f) as usize),
        _ => None,
    };
    match (by_fraction, config.max_reserved_bytes) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<B: DeviceBackend> State<B> {
    /// The slot of `stream`, registering it on first use.
    #[inline]
    pub(crate) fn stream_slot(&mut self, stream: B::Stream) -> u16 {
        if let Some(i) = self.streams.iter().position(|s| *s == stream) {
            return i as u16;
        }
        let slot = self.streams.len().min(u16::MAX as usize) as u16;
        self.streams.push(stream);
        self.index.ensure_stream(slot);
        let need = (slot as usize + 1) * 2;
        if self.expandable.len() < need {
            self.expandable.resize(need, u32::MAX);
        }
        slot
    }

    #[inline]
    pub(crate) fn pool_of(&self, b: &Block) -> Pool {
        b.pool
    }

    #[inline]
    pub(crate) fn is_expandable(&self, b: &Block) -> bool {
        b.expandable
    }

    /// Best fit for `rounded` bytes among the free blocks of (slot, pool),
    /// removed from the index. Fixed-segment blocks follow the oversize rule.
    #[inline]
    pub(crate) fn take_fit(
        &mut self,
        slot: u16,
        pool: Pool,
        rounded: usize,
        max_split: usize,
    ) -> Option<BlockId> {
        let State { index, blocks, .. } = self;
        let key = index.take_first(slot, pool, rounded, |k| {
            fit_verdict(blocks, pool, rounded, max_split, k)
        })?;
        if self.blocks.at(key.2).is_split() {
            self.stats.inactive_split.sub(pool, 1);
            self.stats.inactive_split_bytes.sub(pool, key.0);
        }
        Some(key.2)
    }

    #[inline]
    pub(crate) fn find_fit(
        &self,
        slot: u16,
        pool: Pool,
        rounded: usize,
        max_split: usize,
    ) -> Option<(usize, usize, BlockId)> {
        for key in self.index.at_least(slot, pool, rounded) {
            match fit_verdict(&self.blocks, pool, rounded, max_split, key) {
                Verdict::Take => return Some(*key),
                Verdict::Skip => continue,
                Verdict::Stop => return None,
            }
        }
        None
    }

    /// Splits the free block `id` (out of the index) to `rounded` bytes if the
    /// remainder is worth keeping, marks it in use and counts it.
    #[inline]
    pub(crate) fn hand_out(
        &mut self,
        id: BlockId,
        rounded: usize,
        requested: usize,
        max_split: usize,
        expandable: bool,
    ) -> (usize, usize) {
        let (size, pool) = {
            let b = self.blocks.at(id);
            (b.size, self.pool_of(b))
        };
        debug_assert!(
            size >= rounded,
            "block of {size} B handed out for {rounded} B"
        );
        let rest = size.saturating_sub(rounded);
        let split = match pool {
            Pool::Small => rest >= MIN_BLOCK,
            Pool::Large if expandable => rest >= MIN_BLOCK,
            Pool::Large => rest > LARGE_SPLIT_REMAINDER && size < max_split,
        };
        let rest = if split {
            self.blocks.split(id, rounded)
        } else {
            None
        };
        let b = self.blocks.at_mut(id);
        b.state = BlockState::InUse;
        b.requested = requested;
        if let Some(r) = rest {
            // merges only after a cross-stream reuse put `id` next to a free
            // block of its new stream
            self.merge_and_index(r);
        }
        let b = self.blocks.at(id);
        let (ptr, size, slot) = (b.ptr, b.size, b.stream);
        let s = &mut self.stats;
        s.allocation.add(pool, 1);
        s.allocated_bytes.add(pool, size);
        s.requested_bytes.add(pool, requested);
        s.active.add(pool, 1);
        s.active_bytes.add(pool, size);
        self.trace.push(TraceAction::Alloc, ptr, size, slot);
        (ptr, size)
    }

    /// Adds free block `id` to the index (and the inactive-split counters).
    #[inline]
    pub(crate) fn index_insert(&mut self, id: BlockId) {
        let b = self.blocks.at(id);
        debug_assert_eq!(
            b.state,
            BlockState::Free,
            "block {id} at {:#x} indexed while {:?}",
            b.ptr,
            b.state
        );
        let pool = self.pool_of(b);
        let (key, slot, split) = ((b.size, b.ptr, id), b.stream, b.is_split());
        self.index.insert(slot, pool, key);
        if split {
            self.stats.inactive_split.add(pool, 1);
            self.stats.inactive_split_bytes.add(pool, key.0);
        }
    }

    /// Removes free block `id` from the index.
    #[inline]
    pub(crate) fn index_remove(&mut self, id: BlockId) {
        let b = self.blocks.at(id);
        let pool = self.pool_of(b);
        self.index_remove_key(b.stream, pool, (b.size, b.ptr, id));
    }

    #[inline]
    fn index_remove_key(&mut self, slot: u16, pool: Pool, key: (usize, usize, BlockId)) {
        if self.index.remove(slot, pool, key) && self.blocks.at(key.2).is_split() {
            self.stats.inactive_split.sub(pool, 1);
            self.stats.inactive_split_bytes.sub(pool, key.0);
        }
    }

    /// Makes in-use or pending block `id` free: merges it with free neighbours
    /// of its stream and indexes the result, which it returns.
    pub(crate) fn complete_free(&mut self, id: BlockId) -> BlockId {
        let (pool, size, ptr, slot) = {
            let b = self.blocks.at(id);
            (self.pool_of(b), b.size, b.ptr, b.stream)
        };
        self.stats.active.sub(pool, 1);
        self.stats.active_bytes.sub(pool, size);
        self.trace.push(TraceAction::FreeCompleted, ptr, size, slot);
        self.blocks.at_mut(id).state = BlockState::Free;
        self.blocks.at_mut(id).requested = 0;
        self.merge_and_index(id)
    }

    /// Merges free (unindexed) block `id` with free neighbours of its stream,
    /// indexes the result and returns it.
    pub(crate) fn merge_and_index(&mut self, mut id: BlockId) -> BlockId {
        let slot = self.blocks.at(id).stream;
        let next = self.blocks.at(id).next;
        if next != NIL && self.mergeable(next, slot) {
            self.index_remove(next);
            self.blocks.absorb_next(id);
        }
        let prev = self.blocks.at(id).prev;
        if prev != NIL && self.mergeable(prev, slot) {
            self.index_remove(prev);
            self.blocks.absorb_next(prev);
            id = prev;
        }
        self.index_insert(id);
        id
    }

    #[inline]
    fn mergeable(&self, id: BlockId, slot: u16) -> bool {
        let b = self.blocks.at(id);
        b.state == BlockState::Free && b.stream == slot
    }

    /// Holds block `id` until events recorded now on `streams` complete.
    fn defer_free(&mut self, backend: &B, id: BlockId, streams: Vec<u16>) {
        let mut events = Vec::with_capacity(streams.len());
        let mut needs_sync = false;
        for slot in streams {
            let Some(&s) = self.streams.get(slot as usize) else {
                continue;
            };
            match backend.record_event(s) {
                Ok(e) => events.push(e),
                Err(_) => needs_sync = true,
            }
        }
        self.blocks.at_mut(id).state = BlockState::Pending;
        self.pending.push(PendingFree {
            block: id,
            events,
            needs_sync,
        });
    }

    /// Frees pending blocks whose events completed (all of them after a
    /// device-wide sync when `synced`).
    pub(crate) fn process_pending(&mut self, backend: &B, synced: bool) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let done = synced || (!p.needs_sync && p.events.iter().all(|e| backend.event_done(e)));
            if done {
                let p = self.pending.swap_remove(i);
                self.complete_free(p.block);
            } else {
                i += 1;
            }
        }
    }
}
