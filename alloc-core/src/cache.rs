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
//!   and pending blocks (PyTorch's: it drops when the free completes); `reserved_bytes` = Σ mapped bytes of segments.
//! - T2 `inactive_split` counts the free blocks of fixed segments that share
//!   their segment (PyTorch's definition: free pages of an expandable segment
//!   can always be released, so its free blocks are never "inactive split").
//! - P1 a pending block waits for one event per stream that used it; each
//!   stream's events are queried in the order they were recorded, stopping at
//!   the first that has not completed.
//! - S6 a device-wide sync runs outside the lock (it blocks for as long as
//!   the queued work runs); what it proves idle is decided by the free
//!   clock read under the lock before it (a `SyncMark`): every free (an
//!   immediate one, or the deferral of a pending one) takes the next tick,
//!   and a free block remembers the latest tick of its parts. After the
//!   sync, a block freed before the mark is idle whoever completed its
//!   free; a block freed since (by another thread meanwhile) may be in use
//!   by work queued after the sync, so its stream is queried as usual.
//!
//! # Streams
//! The stream registry gives each stream a slot on first use: a hash
//! lookup (after a one-entry cache of the last stream), no size limit, no
//! aliasing: a slot names one live stream at a time.
//! [`CachingAllocator::forget_stream`] waits for the stream's work, moves
//! its blocks and reservations to the *orphan* slot (one slot for all
//! forgotten streams, idle forever, so its cached blocks serve any stream)
//! and retires its slot; the stream's handle may come back as a new stream.
//! The next new stream reuses the retired slot, empty, so a server that
//! creates and forgets a stream per request keeps as many slots as it has
//! streams alive at once, plus the orphan. Blocks still in use from the
//! forgotten stream stay valid; freed later, they wait for the uses recorded
//! on other streams, then join the orphan's cache (never the new stream's:
//! it did not allocate them).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::backend::{DeviceBackend, DevicePtr};
use crate::block::{Block, BlockId, BlockSlab, BlockState, NIL, Slot};
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

/// Frees waiting for events recorded on the streams that used their blocks
/// (P1): one queue of (event, block, deferral number) per stream, in
/// recording order.
pub(crate) struct Pending<E> {
    queues: Vec<VecDeque<(E, BlockId, u64)>>,
    /// Slots whose queue is not empty.
    active: Vec<Slot>,
    /// Per pending block: events still outstanding, whether an event could
    /// not be recorded (then only a device-wide sync frees it), and its
    /// deferral number.
    waits: HashMap<BlockId, (u32, bool, u64)>,
    /// The next deferral number (they increase with time, so a device-wide
    /// sync completes exactly the deferrals numbered below a mark taken
    /// before it).
    next_seq: u64,
}

impl<E> Default for Pending<E> {
    fn default() -> Self {
        Pending {
            queues: Vec::new(),
            active: Vec::new(),
            waits: HashMap::new(),
            next_seq: 0,
        }
    }
}

/// What a device-wide synchronisation run outside the lock covers: the free
/// clock, read under the lock just before it. Memory freed (or whose free
/// was deferred) before the mark is idle after the sync; whatever other
/// threads did while the lock was released is judged by querying events, as
/// without a sync (S6).
#[derive(Clone, Copy)]
pub(crate) struct SyncMark {
    /// Frees that took a tick below this happened before the sync.
    pub(crate) seq: u64,
}

impl<E> Pending<E> {
    /// Whether no free is pending.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }

    /// Blocks whose free is pending.
    pub(crate) fn len(&self) -> usize {
        self.waits.len()
    }
}

/// FxHash: the stream registry hashes small `Copy` handles, where SipHash's
/// resistance to chosen keys buys nothing and costs a cache hit's budget.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u64(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_u32(&mut self, w: u32) {
        self.write_u64(u64::from(w));
    }
    #[inline]
    fn write_usize(&mut self, w: usize) {
        self.write_u64(w as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The engine state behind the lock.
pub(crate) struct State<B: DeviceBackend> {
    pub(crate) blocks: BlockSlab,
    pub(crate) segs: SegmentTable,
    /// Stream of each slot (slots in order of first use; a forgotten
    /// stream's handle stays for its name).
    pub(crate) streams: Vec<B::Stream>,
    /// Whether each slot's stream was forgotten (idle until the slot is
    /// reused).
    pub(crate) retired: Vec<bool>,
    /// Retired slots, reused by the next new streams.
    free_slots: Vec<Slot>,
    /// Per slot: how many times it was reused (a registration is a slot and
    /// its generation).
    slot_gen: Vec<u32>,
    /// The slot that holds the blocks and reservations of every forgotten
    /// stream: idle forever, never reused, in no stream's name.
    pub(crate) orphan: Option<Slot>,
    /// The slot of each registered stream.
    slot_of: FxMap<B::Stream, Slot>,
    /// The last stream looked up and its slot.
    last: Option<(B::Stream, Slot)>,
    pub(crate) index: FreeIndex,
    /// Expandable segments (reservations) of each (stream slot, pool), in the
    /// order they were reserved.
    pub(crate) expandable: Vec<Vec<u32>>,
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
            retired: Vec::new(),
            free_slots: Vec::new(),
            slot_gen: Vec::new(),
            orphan: None,
            slot_of: FxMap::default(),
            last: None,
            index: FreeIndex::default(),
            expandable: Vec::new(),
            pending: Pending::default(),
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
            });
        }
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
            st.process_pending(&self.backend);
        }
        let id = match st.take_fit(slot, pool, rounded, self.config.max_split_size) {
            Some(id) => id,
            None => {
                let (g, got) = self.alloc_slow(st, stream, slot, pool, bytes, rounded);
                st = g;
                match got {
                    Ok(id) => id,
                    Err(e) => {
                        drop(st);
                        self.notify_oom(&e);
                        return Err(e);
                    }
                }
            }
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
        let (ptr, size, pool, slot) = {
            let b = st.blocks.at(id);
            let pool = st.pool_of(b);
            (b.ptr, b.size, pool, b.stream)
        };
        st.stats.allocation.sub(pool, 1);
        st.stats.allocated_bytes.sub(pool, size);
        if size >= self.config.max_split_size {
            st.stats.oversize_allocations.sub(1);
        }
        st.trace
            .push(TraceAction::FreeRequested, ptr, size, trace_slot(slot));
        let uses = if st.uses.is_empty() {
            None
        } else {
            st.uses.remove(&id)
        };
        match uses {
            Some(streams) => st.defer_free(&self.backend, id, streams),
            None => {
                let tick = st.tick();
                st.complete_free(id, tick);
            }
        }
    }

    /// Notes that block `id` (allocated on `own`) is used on `stream`.
    /// (`own` is only a quick test: after `forget_stream`, the same handle
    /// can name a new stream, so the slots decide.)
    pub(crate) fn record_stream(&self, id: BlockId, own: B::Stream, stream: B::Stream) {
        let mut st = self.lock();
        let slot = st.stream_slot(stream);
        if stream == own && st.blocks.at(id).stream == slot {
            return;
        }
        let uses = st.uses.entry(id).or_default();
        if !uses.contains(&slot) {
            uses.push(slot);
        }
    }

    /// Forgets `stream` (say, before the program destroys it): waits for the
    /// work issued on it so far, then retires its slot. Its cached blocks
    /// stay, idle, for any stream to reuse; a stream with the same handle
    /// used later is a new stream. Buffers still allocated on it stay valid;
    /// work launched on the handle after this call that uses such a buffer
    /// must be declared with the buffer's `record_stream(handle)`, as for
    /// any other stream (the handle now names a new stream). Call it once no
    /// other thread issues work on `stream`.
    pub fn forget_stream(&self, stream: B::Stream) {
        let registration = {
            let st = self.lock();
            match st.slot_of.get(&stream) {
                Some(&slot) => (slot, st.slot_gen.get(slot as usize).copied()),
                None => return,
            }
        };
        // outside the lock: waiting may block for as long as the work runs
        match self.backend.record_event(stream) {
            Ok(e) => self.backend.wait_event(&e),
            Err(_) => self.backend.synchronize(),
        }
        let mut st = self.lock();
        // only the registration waited for: another thread may have
        // forgotten it meanwhile, and the handle come back as a new stream
        let current = st
            .slot_of
            .get(&stream)
            .map(|&slot| (slot, st.slot_gen.get(slot as usize).copied()));
        if current != Some(registration) {
            return;
        }
        if let Some(slot) = st.slot_of.remove(&stream) {
            st.last = None;
            if let Some(r) = st.retired.get_mut(slot as usize) {
                *r = true;
            }
            // Frees waiting for events on it stay in its queue: those events
            // completed, and the next allocation processes them as any
            // completed event, also once the slot names a new stream.
            // Uses recorded on it are over (its work completed): once the
            // slot names another stream they must not make frees wait for
            // that stream.
            st.uses.retain(|_, streams| {
                streams.retain(|&s| s != slot);
                !streams.is_empty()
            });
            st.rehome_to_orphan(slot, stream);
            st.free_slots.push(slot);
        }
    }

    /// Stream slots the registry holds: streams alive, retired slots waiting
    /// for reuse, and (once a stream was forgotten) the one slot that keeps
    /// forgotten streams' blocks: at most the most streams ever alive at
    /// once, plus one.
    pub fn stream_slots(&self) -> usize {
        self.lock().streams.len()
    }

    /// The cap on reserved bytes now (memory fraction and `max_reserved_mb`),
    /// if any.
    pub fn memory_cap(&self) -> Option<usize> {
        self.lock().limit
    }

    /// Streams registered and not forgotten.
    pub fn stream_count(&self) -> usize {
        self.lock().slot_of.len()
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
        let fraction = if fraction.is_nan() { 1.0 } else { fraction };
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

/// Whether a free block of `size` bytes handed out for `rounded` bytes is
/// split: PyTorch's `should_split`, where the request's size, not the
/// block's, is tested against `max_split` (small-pool and expandable blocks
/// split down to [`MIN_BLOCK`]).
#[inline]
pub(crate) fn should_split(
    pool: Pool,
    expandable: bool,
    size: usize,
    rounded: usize,
    max_split: usize,
) -> bool {
    let rest = size.saturating_sub(rounded);
    match pool {
        Pool::Small => rest >= MIN_BLOCK,
        Pool::Large if expandable => rest >= MIN_BLOCK,
        Pool::Large => rest > LARGE_SPLIT_REMAINDER && rounded < max_split,
    }
}

/// Whether free block `b` counts in `inactive_split` (T2): it shares a fixed
/// segment with other blocks.
#[inline]
fn counts_inactive_split(b: &Block) -> bool {
    b.is_split() && !b.expandable
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
    pub(crate) fn stream_slot(&mut self, stream: B::Stream) -> Slot {
        if let Some((s, slot)) = self.last
            && s == stream
        {
            return slot;
        }
        let slot = match self.slot_of.get(&stream) {
            Some(&slot) => slot,
            None => self.register(stream),
        };
        self.last = Some((stream, slot));
        slot
    }

    #[cold]
    #[inline(never)]
    fn register(&mut self, stream: B::Stream) -> Slot {
        if let Some(slot) = self.free_slots.pop() {
            let i = slot as usize;
            self.streams[i] = stream;
            self.retired[i] = false;
            if let Some(g) = self.slot_gen.get_mut(i) {
                *g = g.wrapping_add(1);
            }
            self.slot_of.insert(stream, slot);
            return slot;
        }
        let slot = self.new_slot(stream);
        self.slot_of.insert(stream, slot);
        slot
    }

    /// A slot never used before, for `stream`.
    fn new_slot(&mut self, stream: B::Stream) -> Slot {
        // 2^32 streams would need far more memory than the registry holds
        // first; saturating keeps the arithmetic total.
        let slot = Slot::try_from(self.streams.len()).unwrap_or(Slot::MAX);
        self.streams.push(stream);
        self.retired.push(false);
        self.slot_gen.push(0);
        self.index.ensure_stream(slot);
        let need = (slot as usize + 1) * 2;
        if self.expandable.len() < need {
            self.expandable.resize_with(need, Vec::new);
        }
        slot
    }

    /// Moves every block and reservation of forgotten slot `slot` to the
    /// orphan slot (made on first use, named by `stream`), so that the slot
    /// can name a new stream: blocks still in use from the forgotten stream
    /// are then nobody's own when freed (they wait for the uses recorded on
    /// other streams, then serve any stream), never the new stream's.
    fn rehome_to_orphan(&mut self, slot: Slot, stream: B::Stream) {
        let orphan = match self.orphan {
            Some(o) => o,
            None => {
                let o = self.new_slot(stream);
                self.retired[o as usize] = true;
                self.orphan = Some(o);
                o
            }
        };
        let mut moved = Vec::new();
        let mut free = Vec::new();
        let sids: Vec<u32> = self.segs.iter().map(|(sid, _)| sid).collect();
        for sid in sids {
            let Some(seg) = self.segs.get_mut(sid) else {
                continue;
            };
            if seg.stream == slot {
                seg.stream = orphan;
            }
            let mut id = seg.head;
            while id != NIL {
                let b = self.blocks.at(id);
                let next = b.next;
                if b.stream == slot {
                    if b.state == BlockState::Free {
                        self.index_remove(id);
                        free.push(id);
                    }
                    moved.push(id);
                }
                id = next;
            }
        }
        for &id in &moved {
            self.blocks.at_mut(id).stream = orphan;
        }
        for id in free {
            // an earlier merge may have absorbed it
            if self
                .blocks
                .get(id)
                .is_some_and(|b| b.state == BlockState::Free && b.stream == orphan)
                && !self.index_holds(id)
            {
                self.merge_and_index(id);
            }
        }
        for pool in [Pool::Small, Pool::Large] {
            let from = slot as usize * 2 + pool.index();
            let to = orphan as usize * 2 + pool.index();
            let list = self
                .expandable
                .get_mut(from)
                .map(std::mem::take)
                .unwrap_or_default();
            if let Some(dst) = self.expandable.get_mut(to) {
                dst.extend(list);
            }
        }
    }

    /// Whether free block `id` is in the index.
    fn index_holds(&self, id: BlockId) -> bool {
        let b = self.blocks.at(id);
        self.index.contains(b.stream, b.pool, &(b.size, b.ptr, id))
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
        slot: Slot,
        pool: Pool,
        rounded: usize,
        max_split: usize,
    ) -> Option<BlockId> {
        let State { index, blocks, .. } = self;
        let key = index.take_first(slot, pool, rounded, |k| {
            fit_verdict(blocks, pool, rounded, max_split, k)
        })?;
        if counts_inactive_split(self.blocks.at(key.2)) {
            self.stats.inactive_split.sub(pool, 1);
            self.stats.inactive_split_bytes.sub(pool, key.0);
        }
        Some(key.2)
    }

    #[inline]
    pub(crate) fn find_fit(
        &self,
        slot: Slot,
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
        let rest = if should_split(pool, expandable, size, rounded, max_split) {
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
        self.trace
            .push(TraceAction::Alloc, ptr, size, trace_slot(slot));
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
        let pool = self.pool_of(b);
        let (key, slot, split) = ((b.size, b.ptr, id), b.stream, counts_inactive_split(b));
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
    fn index_remove_key(&mut self, slot: Slot, pool: Pool, key: (usize, usize, BlockId)) {
        if self.index.remove(slot, pool, key) && counts_inactive_split(self.blocks.at(key.2)) {
            self.stats.inactive_split.sub(pool, 1);
            self.stats.inactive_split_bytes.sub(pool, key.0);
        }
    }

    /// The next tick of the free clock (S6).
    #[inline]
    pub(crate) fn tick(&mut self) -> u64 {
        let t = self.pending.next_seq;
        self.pending.next_seq += 1;
        t
    }

    /// Makes in-use or pending block `id` free, freed at tick `freed_at` (its
    /// free, or the deferral of its free): merges it with free neighbours of
    /// its stream and indexes the result, which it returns.
    pub(crate) fn complete_free(&mut self, id: BlockId, freed_at: u64) -> BlockId {
        let (pool, size, ptr, slot, requested) = {
            let b = self.blocks.at(id);
            (self.pool_of(b), b.size, b.ptr, b.stream, b.requested)
        };
        self.stats.active.sub(pool, 1);
        self.stats.active_bytes.sub(pool, size);
        self.stats.requested_bytes.sub(pool, requested);
        self.trace
            .push(TraceAction::FreeCompleted, ptr, size, trace_slot(slot));
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

    /// Holds block `id` until events recorded now on `streams` complete
    /// (retired streams completed their work when they were forgotten).
    fn defer_free(&mut self, backend: &B, id: BlockId, streams: Vec<Slot>) {
        let (mut n, mut needs_sync) = (0u32, false);
        let seq = self.tick();
        for slot in streams {
            let Some(&s) = self.streams.get(slot as usize) else {
                continue;
            };
            if self.retired.get(slot as usize).copied().unwrap_or(true) {
                continue;
            }
            match backend.record_event(s) {
                Ok(e) => {
                    let i = slot as usize;
                    if self.pending.queues.len() <= i {
                        self.pending.queues.resize_with(i + 1, VecDeque::new);
                    }
                    if self.pending.queues[i].is_empty() {
                        self.pending.active.push(slot);
                    }
                    self.pending.queues[i].push_back((e, id, seq));
                    n += 1;
                }
                Err(_) => needs_sync = true,
            }
        }
        if n == 0 && !needs_sync {
            self.complete_free(id, seq);
            return;
        }
        self.blocks.at_mut(id).state = BlockState::Pending;
        self.pending.waits.insert(id, (n, needs_sync, seq));
    }

    /// The mark a device-wide sync started after now will cover.
    pub(crate) fn sync_mark(&self) -> SyncMark {
        SyncMark {
            seq: self.pending.next_seq,
        }
    }

    /// After a device-wide sync that started after `mark` was taken: frees
    /// every block deferred before the mark (its events have completed),
    /// whatever was deferred since (by other threads while the lock was
    /// released) stays pending (S6).
    pub(crate) fn complete_synced(&mut self, mark: SyncMark) {
        for q in &mut self.pending.queues {
            while q.front().is_some_and(|(_, _, seq)| *seq < mark.seq) {
                q.pop_front();
            }
        }
        let queues = &self.pending.queues;
        self.pending
            .active
            .retain(|&s| queues.get(s as usize).is_some_and(|q| !q.is_empty()));
        let mut done: Vec<(BlockId, u64)> = self
            .pending
            .waits
            .iter()
            .filter(|(_, w)| w.2 < mark.seq)
            .map(|(b, w)| (*b, w.2))
            .collect();
        done.sort_unstable();
        for (b, seq) in done {
            self.pending.waits.remove(&b);
            self.complete_free(b, seq);
        }
    }

    /// Frees pending blocks whose events completed. Each stream's queue is
    /// queried in order and left at its first event that has not completed
    /// (P1).
    pub(crate) fn process_pending(&mut self, backend: &B) {
        let mut i = 0;
        while i < self.pending.active.len() {
            let slot = self.pending.active[i] as usize;
            while let Some((e, b, _)) = self.pending.queues[slot].front() {
                if !backend.event_done(e) {
                    break;
                }
                let b = *b;
                self.pending.queues[slot].pop_front();
                let done = match self.pending.waits.get_mut(&b) {
                    Some(w) => {
                        w.0 = w.0.saturating_sub(1);
                        (w.0 == 0 && !w.1).then_some(w.2)
                    }
                    None => None,
                };
                if let Some(seq) = done {
                    self.pending.waits.remove(&b);
                    self.complete_free(b, seq);
                }
            }
            if self.pending.queues[slot].is_empty() {
                self.pending.active.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// A slot as the trace ring records it (whole: trace entries hold 64 bits, so
/// streams past the 65,536th keep distinct numbers in snapshots too).
#[inline]
pub(crate) fn trace_slot(slot: Slot) -> u32 {
    slot
}
