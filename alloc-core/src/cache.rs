//! [`CachingAllocator`]: the block-caching engine, and its fast path: best
//! fit in the free index of the request's stream and pool, split, hand out;
//! a free merges with free neighbours of its stream and is indexed again.
//! The rest of the engine, by concept:
//! - `streams.rs`: the stream registry (which slot names which stream,
//!   `forget_stream`, the orphan slot);
//! - `pending.rs`: frees that wait for events of other streams, the free
//!   clock and the mark of a device-wide sync;
//! - `reclaim.rs`: the slow path (the reclaim ladder: reuse of other
//!   streams' idle cache, grow, release, out of memory), `empty_cache`,
//!   `trim`;
//! - `expandable.rs`: growing and releasing expandable segments;
//! - `block.rs`, `segment.rs`, `free_index.rs`: the structures;
//! - `snapshot.rs`, `trace.rs`, `stats.rs`, `validate.rs`: what the engine
//!   reports and checks.
//!
//! # Type map
//! | word | type |
//! |---|---|
//! | segment | memory held from the backend (`segment.rs`): fixed (one allocation) or expandable (an address-space reservation whose pages are mapped as needed); the segment's *kind* |
//! | expandable | only that segment kind (`SegmentKind::Expandable`; [`Config::expandable_segments`] asks for it); an expandable segment is also called a *reservation* (`Reservations`: those of each stream and pool) |
//! | block | a free, in-use, pending or unmapped sub-range of a segment (`block.rs`) |
//! | pool | small (≤ 1 MiB) or large blocks ([`Pool`]) |
//! | stream | the backend's queue of work; each block belongs to one |
//! | slot | a stream's number in the stream registry (`streams.rs`), only that |
//! | key | a free block as the free index holds it (size, address, id) |
//! | tick | the free clock's unit: every free takes one (`pending.rs`) |
//! | reserved / in use / cached | held from the backend / handed out / reserved − in use ([`Stats`]) |
//! | release | give memory back to the backend (`empty_cache`, `trim`, the reclaim ladder) |
//! | snapshot | the memory snapshot only: every segment and block ([`Snapshot`](crate::snapshot::Snapshot), also pickled in PyTorch's shape); the scope registry's picture is the scope tree (`alloc_scope::scope_tree`) |
//!
//! # Invariants
//! The statistics keep [`CoreInvariant::T1`] (they are sums over the blocks
//! and segments) and [`CoreInvariant::T2`] (`inactive_split`). The others
//! belong to a concept: [`CoreInvariant::S1`]–[`CoreInvariant::S3`] and
//! [`CoreInvariant::A1`] to `block.rs`, [`CoreInvariant::S4`] to
//! `segment.rs`, [`CoreInvariant::F1`] to `free_index.rs`,
//! [`CoreInvariant::P1`] and the locking rule [`LockRule::L1`] to
//! `pending.rs`. Every definition is on its variant
//! ([`CoreInvariant`], [`LockRule`]).

#[cfg(doc)]
use crate::{CoreInvariant, LockRule};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::backend::{DeviceBackend, DevicePtr};
use crate::block::{Block, BlockId, BlockSlab, BlockState, NIL};
use crate::buffer::DeviceBuffer;
use crate::config::Config;
use crate::error::{AllocError, OutOfMemory};
use crate::expandable::Reservations;
use crate::free_index::{FreeIndex, Key, Verdict};
use crate::front::{Entry, FrontCache, Put};
use crate::pending::Pending;
use crate::segment::{SegmentKind, SegmentTable};
use crate::size_class::{MIN_BLOCK, Pool, SMALL_SIZE, round_size};
use crate::stats::Stats;
use crate::streams::{Slot, StreamRegistry};
use crate::trace::{TraceAction, TraceEntry, TraceRing};

/// A callback run (outside the engine's lock) when an allocation fails with
/// out of memory.
pub type OomObserver = Arc<dyn Fn(&OutOfMemory) + Send + Sync>;

/// A free block frees its remainder when at least this much is left over in a
/// fixed large-pool segment (PyTorch's rule; small-pool and expandable blocks
/// split down to [`MIN_BLOCK`]).
pub const LARGE_SPLIT_REMAINDER: usize = SMALL_SIZE;

/// The engine state behind the lock.
pub(crate) struct State<B: DeviceBackend> {
    pub(crate) blocks: BlockSlab,
    pub(crate) segs: SegmentTable,
    /// The stream registry (`streams.rs`).
    pub(crate) streams: StreamRegistry<B::Stream>,
    pub(crate) index: FreeIndex,
    /// The expandable segments of each (stream slot, pool).
    pub(crate) reservations: Reservations,
    /// Deferred frees and the free clock (`pending.rs`).
    pub(crate) pending: Pending<B::Event>,
    /// Other streams (slots) that used an in-use block (`record_stream`).
    pub(crate) uses: HashMap<BlockId, Vec<Slot>>,
    pub(crate) stats: Stats,
    pub(crate) trace: TraceRing,
    /// Cap on reserved bytes (memory fraction / byte cap).
    pub(crate) limit: Option<usize>,
}

/// The block-caching device allocator, generic over its backend.
///
/// `Send + Sync`: one mutex guards the pools and the statistics; in front of
/// it, the front cache (`front.rs`, `front_cache_mb`) serves a thread's
/// repeated requests on its stream under a lock of its own shard, whose
/// statistics are folded in before anything reads them.
pub struct CachingAllocator<B: DeviceBackend> {
    pub(crate) backend: B,
    /// The per-thread shards in front of the lock (`front.rs`).
    pub(crate) front: FrontCache<B::Stream>,
    pub(crate) config: Config,
    /// The kind of segment this engine makes: expandable when configured and
    /// supported, else fixed.
    pub(crate) segment_kind: SegmentKind,
    /// Page size of expandable segments.
    pub(crate) page: usize,
    pub(crate) state: Mutex<State<B>>,
    pub(crate) observers: RwLock<Vec<OomObserver>>,
    /// Whether frees were pending when the lock was last released through
    /// `unlock` (a hint: an allocation then queries their events with the
    /// lock released, `pending.rs`).
    pub(crate) pending_hint: AtomicBool,
}

impl<B: DeviceBackend> CachingAllocator<B> {
    /// An engine drawing from `backend` with `config`. Expandable segments are
    /// used when the config asks for them (or leaves them to the default) and
    /// the backend can map pages.
    pub fn new(backend: B, config: Config) -> Self {
        let page = backend
            .page_size()
            .filter(|p| p.is_power_of_two() && *p >= MIN_BLOCK);
        let segment_kind = if page.is_some() && config.expandable_segments.unwrap_or(true) {
            SegmentKind::Expandable
        } else {
            SegmentKind::Fixed
        };
        let limit = compute_limit(&config, backend.mem_info().map(|m| m.total));
        let state = State {
            blocks: BlockSlab::default(),
            segs: SegmentTable::default(),
            streams: StreamRegistry::default(),
            index: FreeIndex::default(),
            reservations: Reservations::default(),
            pending: Pending::default(),
            uses: HashMap::new(),
            stats: Stats::default(),
            trace: TraceRing::new(config.trace_entries),
            limit,
        };
        CachingAllocator {
            backend,
            front: FrontCache::new(config.front_cache_bytes, config.trace_entries > 0),
            config,
            segment_kind,
            page: page.unwrap_or(crate::size_class::ROUND_LARGE),
            state: Mutex::new(state),
            observers: RwLock::new(Vec::new()),
            pending_hint: AtomicBool::new(false),
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
        self.segment_kind.is_expandable()
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<B>> {
        crate::front::check_no_shard_held();
        // A panic while holding the lock is an engine bug; the state is still
        // the best information there is, so keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether some thread holds the engine lock now. A diagnostic for
    /// tests, stale as soon as it returns: a test backend calls it from
    /// inside an event call to check that the engine made the call with its
    /// lock released ([`CoreInvariant::P1`]). Never blocks.
    pub fn lock_held(&self) -> bool {
        matches!(
            self.state.try_lock(),
            Err(std::sync::TryLockError::WouldBlock)
        )
    }

    /// Allocates `bytes` bytes for use on `stream`. A request of 0 bytes
    /// gets an empty buffer at address 0 that counts nothing (as PyTorch's).
    #[inline]
    pub fn allocate(
        &self,
        bytes: usize,
        stream: B::Stream,
    ) -> Result<DeviceBuffer<'_, B>, AllocError> {
        if bytes == 0 {
            return Ok(DeviceBuffer {
                alloc: self,
                block: NIL,
                ptr: DevicePtr(0),
                size: 0,
                requested: 0,
                stream,
                owner: crate::scope::ScopeId::UNTRACKED,
                epoch: 0,
                recorded: AtomicBool::new(false),
            });
        }
        if let Some((e, epoch)) = self.front.take(stream, bytes) {
            let owner = crate::scope::charge_device_alloc(e.size as u64);
            return Ok(DeviceBuffer {
                alloc: self,
                block: e.id,
                ptr: DevicePtr(e.ptr),
                size: e.size,
                requested: bytes,
                stream,
                owner,
                epoch,
                recorded: AtomicBool::new(false),
            });
        }
        let rounded = round_size(bytes, &self.config.roundup_power2_divisions).ok_or(
            AllocError::TooLarge {
                requested: bytes,
                max: usize::MAX - MIN_BLOCK,
            },
        )?;
        let pool = Pool::of(rounded);
        // pending frees' events, queried with the lock released (core:P1)
        let probes = self.query_unlocked();
        let mut st = self.lock();
        if let Some(p) = probes {
            st.settle_probes(p);
        }
        self.drain_own_fitting(&mut st, stream, pool, rounded);
        let slot = st.stream_slot(stream);
        let id = match st.take_fit(slot, pool, rounded, self.config.max_split_size) {
            Some(id) => id,
            None => {
                let (g, got) = self.alloc_slow(st, stream, slot, pool, bytes, rounded);
                st = g;
                match got {
                    Ok(id) => id,
                    Err(e) => {
                        self.unlock(st);
                        self.notify_oom(&e);
                        return Err(e);
                    }
                }
            }
        };
        let (ptr, size) = st.hand_out(id, rounded, bytes, self.config.max_split_size);
        self.front.note_pending(!st.pending.is_empty());
        let epoch = self.front.epoch();
        self.unlock(st);
        let owner = crate::scope::charge_device_alloc(size as u64);
        Ok(DeviceBuffer {
            alloc: self,
            block: id,
            ptr: DevicePtr(ptr),
            size,
            requested: bytes,
            stream,
            owner,
            epoch,
            recorded: AtomicBool::new(false),
        })
    }

    /// Returns the block of dropped buffer `b` to the cache: into the
    /// calling thread's shard when it has no uses on other streams and fits
    /// there, else through the lock.
    #[inline]
    pub(crate) fn free_buffer(&self, b: &DeviceBuffer<'_, B>) {
        let mut drain_own = false;
        if self.front.len() != 0
            && !b.recorded.load(Ordering::Relaxed)
            && b.size < self.config.max_split_size
        {
            let e = Entry {
                stream: b.stream,
                requested: b.requested,
                size: b.size,
                ptr: b.ptr.0,
                id: b.block,
                pool: Pool::of(b.size),
                epoch: b.epoch,
            };
            match self.front.put(e, b.epoch) {
                Put::Cached => return,
                Put::Full => drain_own = true,
                Put::Refused => {}
            }
        }
        self.free_block(b.block, drain_own);
    }

    /// Returns block `id` (a dropped buffer) to the cache under the lock,
    /// after folding (`drain_own`: draining) the calling thread's shard.
    #[cold]
    #[inline(never)]
    fn free_block(&self, id: BlockId, drain_own: bool) {
        let mut st = self.lock();
        if drain_own {
            self.drain_shard(&mut st, crate::front::thread_shard());
        } else {
            self.fold_own(&mut st);
        }
        let (ptr, size, pool, slot) = {
            let b = st.blocks.at(id);
            (b.ptr, b.size, b.pool, b.stream)
        };
        st.stats.allocation.sub(pool, 1);
        st.stats.allocated_bytes.sub(pool, size);
        if size >= self.config.max_split_size {
            st.stats.oversize_allocations.sub(1);
        }
        st.trace.push(TraceAction::FreeRequested, ptr, size, slot);
        let uses = if st.uses.is_empty() {
            None
        } else {
            st.uses.remove(&id)
        };
        let recording = match uses {
            Some(streams) => st.begin_deferral(id, streams),
            None => {
                let tick = st.tick();
                st.complete_free(id, tick);
                None
            }
        };
        self.front.note_pending(!st.pending.is_empty());
        match recording {
            // the events are recorded with the lock released (core:P1)
            Some(rec) => self.record_unlocked(st, rec),
            None => self.unlock(st),
        }
    }

    /// The cap on reserved bytes now (memory fraction and `max_reserved_mb`),
    /// if any.
    pub fn memory_cap(&self) -> Option<usize> {
        self.lock().limit
    }

    /// A copy of the statistics (the front cache drained first).
    pub fn stats(&self) -> Stats {
        self.lock_drained().stats
    }

    /// Sets every peak to its current value.
    pub fn reset_peak(&self) {
        self.lock_drained().stats.reset_peak();
    }

    /// Zeroes the accumulated totals and event counters.
    pub fn reset_accumulated(&self) {
        self.lock_drained().stats.reset_accumulated();
    }

    /// A `torch.cuda.memory_summary()`-style table.
    pub fn memory_summary(&self) -> String {
        let st = self.lock_drained();
        format!(
            "{} allocator ({} segments{})\n{}",
            self.backend.name(),
            if self.segment_kind.is_expandable() {
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
        let fraction = if fraction.is_nan() { 1.0 } else { fraction };
        let mut cfg = self.config.clone();
        cfg.memory_fraction = Some(fraction.clamp(0.0, 1.0));
        let limit = compute_limit(&cfg, Some(total));
        self.lock_drained().limit = limit;
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
    let Key { size, id, .. } = *key;
    if pool == Pool::Small
        || size < max_split && rounded < max_split
        || blocks.at(id).seg_kind.is_expandable()
    {
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

/// Whether a free block of `size` bytes handed out for `rounded` bytes is
/// split: PyTorch's `should_split`, where the request's size, not the
/// block's, is tested against `max_split` (small-pool and expandable blocks
/// split down to [`MIN_BLOCK`]).
#[inline]
pub(crate) fn should_split(
    pool: Pool,
    kind: SegmentKind,
    size: usize,
    rounded: usize,
    max_split: usize,
) -> bool {
    let rest = size.saturating_sub(rounded);
    match pool {
        Pool::Small => rest >= MIN_BLOCK,
        Pool::Large if kind.is_expandable() => rest >= MIN_BLOCK,
        Pool::Large => rest > LARGE_SPLIT_REMAINDER && rounded < max_split,
    }
}

/// Whether free block `b` counts in `inactive_split` ([`CoreInvariant::T2`]): it shares a fixed
/// segment with other blocks.
#[inline]
fn counts_inactive_split(b: &Block) -> bool {
    b.is_split() && b.seg_kind == SegmentKind::Fixed
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
    /// Best fit for `rounded` bytes among the free blocks of (slot, pool),
    /// removed from the index. Fixed-segment blocks follow the oversize rule.
    #[inline]
    pub(crate) fn take_fit(
        &mut self,
        slot: Slot,
        pool: Pool,
        rounded: usize,
        max_split: usize,
    ) -> Option<BlockId> {
        let State { index, blocks, .. } = self;
        let key = index.take_first(slot, pool, rounded, |k| {
            fit_verdict(blocks, pool, rounded, max_split, k)
        })?;
        if counts_inactive_split(self.blocks.at(key.id)) {
            self.stats.inactive_split.sub(pool, 1);
            self.stats.inactive_split_bytes.sub(pool, key.size);
        }
        Some(key.id)
    }

    #[inline]
    pub(crate) fn find_fit(
        &self,
        slot: Slot,
        pool: Pool,
        rounded: usize,
        max_split: usize,
    ) -> Option<Key> {
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
    ) -> (usize, usize) {
        let (size, pool, kind) = {
            let b = self.blocks.at(id);
            (b.size, b.pool, b.seg_kind)
        };
        debug_assert!(
            size >= rounded,
            "block of {size} B handed out for {rounded} B"
        );
        let rest = if should_split(pool, kind, size, rounded, max_split) {
            self.blocks.split(id, rounded)
        } else {
            None
        };
        let scope = if self.trace.is_on() {
            self.pin_scope()
        } else {
            crate::block::NO_SCOPE
        };
        let b = self.blocks.at_mut(id);
        b.state = BlockState::InUse;
        b.requested = requested;
        b.scope = scope;
        if let Some(r) = rest {
            // the remainder merges with a free block that follows it, if any
            // (the block taken was free, so its own neighbours were not)
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
        if size >= max_split {
            s.oversize_allocations.add(1);
        }
        self.trace.push(TraceAction::Alloc, ptr, size, slot);
        (ptr, size)
    }

    /// The current scope (bits) for a block handed out while history is
    /// recorded, its name pinned; drops the pinned names no live block
    /// mentions once they outnumber twice the live blocks by
    /// `NAMES_SLACK` (amortized: a walk of the blocks).
    #[cold]
    #[inline(never)]
    fn pin_scope(&mut self) -> u64 {
        let bits = self.trace.pin_current_scope();
        let live = self.stats.active.all.current.max(0) as usize;
        if self.trace.pinned_len() > crate::trace::NAMES_SLACK + 2 * live {
            let mut keep: std::collections::HashSet<u64> = self
                .segs
                .iter()
                .flat_map(|(_, s)| self.blocks.chain(s.head))
                .filter(|b| matches!(b.state, BlockState::InUse | BlockState::Pending))
                .map(|b| b.scope)
                .collect();
            keep.insert(bits);
            self.trace.retain_pinned(&keep);
        }
        bits
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
        let key = Key {
            size: b.size,
            ptr: b.ptr,
            id,
        };
        let (pool, slot, split) = (b.pool, b.stream, counts_inactive_split(b));
        self.index.insert(slot, pool, key);
        if split {
            self.stats.inactive_split.add(pool, 1);
            self.stats.inactive_split_bytes.add(pool, key.size);
        }
    }

    /// Removes free block `id` from the index.
    #[inline]
    pub(crate) fn index_remove(&mut self, id: BlockId) {
        let b = self.blocks.at(id);
        let (slot, pool) = (b.stream, b.pool);
        let key = Key {
            size: b.size,
            ptr: b.ptr,
            id,
        };
        if self.index.remove(slot, pool, key) && counts_inactive_split(self.blocks.at(key.id)) {
            self.stats.inactive_split.sub(pool, 1);
            self.stats.inactive_split_bytes.sub(pool, key.size);
        }
    }

    /// Makes in-use or pending block `id` free, freed at tick `freed_at` (its
    /// free, or the deferral of its free): merges it with free neighbours of
    /// its stream and indexes the result, which it returns.
    pub(crate) fn complete_free(&mut self, id: BlockId, freed_at: u64) -> BlockId {
        let (pool, size, ptr, slot, requested) = {
            let b = self.blocks.at(id);
            (b.pool, b.size, b.ptr, b.stream, b.requested)
        };
        self.stats.active.sub(pool, 1);
        self.stats.active_bytes.sub(pool, size);
        self.stats.requested_bytes.sub(pool, requested);
        self.trace.push(TraceAction::FreeCompleted, ptr, size, slot);
        self.make_free(id, freed_at)
    }

    /// Makes in-use block `id` free without counting (a block of a front
    /// cache shard, whose free its shard counted): merges and indexes it.
    pub(crate) fn make_free(&mut self, id: BlockId, freed_at: u64) -> BlockId {
        let b = self.blocks.at_mut(id);
        b.state = BlockState::Free;
        b.requested = 0;
        b.scope = crate::block::NO_SCOPE;
        b.freed_at = freed_at;
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
    fn mergeable(&self, id: BlockId, slot: Slot) -> bool {
        let b = self.blocks.at(id);
        b.state == BlockState::Free && b.stream == slot
    }
}
