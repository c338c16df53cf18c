//! The slow path: reuse of other streams' idle cache, growing (a new fixed
//! segment, or more mapped pages of an expandable segment, see
//! `expandable.rs`), releasing cached memory, `empty_cache`, `trim`, and the
//! out-of-memory error.
//!
//! The reclaim ladder, in order: blocks of the front cache's shards and of
//! pending frees whose events completed → reuse idle cache of other streams
//! → grow → release oversize cached blocks and grow → release all
//! releasable cached memory (waiting for every stream) and try again: the
//! stream's own cache, then every other stream's (all idle after the wait),
//! then grow → out of memory.
//!
//! Expandable segments and `max_split_size`: a block of an expandable segment
//! is always split to size, and free pages in the middle of an expandable
//! segment are unmapped when memory is released, so the oversize rule (which
//! exists to stop large fixed segments from being carved up) is not needed
//! there and reserved memory never grows past what is mapped for live blocks
//! plus the free pages the cache keeps.

#[cfg(doc)]
use crate::LockRule;
use std::sync::{Arc, MutexGuard};

use crate::backend::{BackendError, DeviceBackend, DevicePtr};
use crate::block::{Block, BlockId, BlockState, NIL};
use crate::cache::{CachingAllocator, State, should_split};
use crate::error::{AllocError, OutOfMemory};
use crate::pending::SyncMark;
use crate::segment::{Segment, SegmentId, SegmentKind};
use crate::size_class::{Pool, segment_size};
use crate::streams::Slot;
use crate::trace::TraceAction;

/// Which cached memory a release gives back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Release {
    /// Free blocks of at least `max_split_size` bytes.
    Oversize,
    /// Every free block.
    All,
}

impl<B: DeviceBackend> CachingAllocator<B> {
    /// The slow path of [`allocate`](Self::allocate): the reclaim ladder.
    /// Takes the lock's guard and gives it back: the device-wide sync of the
    /// last step runs with the lock released ([`LockRule::L1`]).
    #[cold]
    #[inline(never)]
    pub(crate) fn alloc_slow<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<B>>,
        stream: B::Stream,
        slot: Slot,
        pool: Pool,
        bytes: usize,
        rounded: usize,
    ) -> (MutexGuard<'a, State<B>>, Result<BlockId, AllocError>) {
        match self.ladder_before_sync(&mut st, slot, pool, rounded) {
            Ok(Some(id)) => return (st, Ok(id)),
            Err(e) => return (st, Err(e)),
            Ok(None) => {}
        }
        let (mut st, mark) = self.synchronize_unlocked(st);
        // the slot again: while the lock was released, another thread may
        // have forgotten the stream (and the slot gone to a new stream)
        let slot = st.stream_slot(stream);
        let got = self.ladder_after_sync(&mut st, mark.as_ref(), slot, pool, bytes, rounded);
        (st, got)
    }

    /// The ladder's steps that need no device-wide sync.
    fn ladder_before_sync(
        &self,
        st: &mut State<B>,
        slot: Slot,
        pool: Pool,
        rounded: usize,
    ) -> Result<Option<BlockId>, AllocError> {
        // blocks in the front cache's shards first: none makes the engine
        // grow or fail (they may merge into the fit the request needs)
        if self.drain_front(st)
            && let Some(id) = st.take_fit(slot, pool, rounded, self.config.max_split_size)
        {
            return Ok(Some(id));
        }
        // then every pending free whose events completed (an allocation
        // queries a few per stream with the lock released; a miss asks
        // about all of them here, on the slow path, before growing)
        if !st.pending.is_empty() {
            st.process_pending(&self.backend);
            if let Some(id) = st.take_fit(slot, pool, rounded, self.config.max_split_size) {
                return Ok(Some(id));
            }
        }
        if self.over_gc_threshold(st, rounded) {
            self.release_cached(st, Release::All, None);
        }
        if let Some(id) = self.reuse_idle_cache(st, slot, pool, rounded) {
            return Ok(Some(id));
        }
        if let Some(id) = self.grow(st, slot, pool, rounded)? {
            return Ok(Some(id));
        }
        st.stats.num_alloc_retries += 1;
        if self.config.max_split_size != usize::MAX
            && self.release_cached(st, Release::Oversize, None)
            && let Some(id) = self.grow(st, slot, pool, rounded)?
        {
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// The ladder's last steps, after the sync that followed `mark` (`None`:
    /// a partial sync, which proves nothing idle, `core:P2`).
    fn ladder_after_sync(
        &self,
        st: &mut State<B>,
        mark: Option<&SyncMark>,
        slot: Slot,
        pool: Pool,
        bytes: usize,
        rounded: usize,
    ) -> Result<BlockId, AllocError> {
        // what other threads put in their shards while the lock was released
        // (freed after the mark: judged by their streams' events)
        self.drain_front(st);
        self.release_cached(st, Release::All, mark);
        self.release_empty_reservations(st);
        if let Some(id) = st.take_fit(slot, pool, rounded, self.config.max_split_size) {
            return Ok(id);
        }
        if let Some(id) = self.reuse_idle_cache(st, slot, pool, rounded) {
            return Ok(id);
        }
        if let Some(id) = self.grow(st, slot, pool, rounded)? {
            return Ok(id);
        }
        Err(self.out_of_memory(st, slot, bytes, rounded))
    }

    /// Whether reserved memory plus `rounded` passes the garbage-collection
    /// threshold of the cap.
    fn over_gc_threshold(&self, st: &State<B>, rounded: usize) -> bool {
        match (self.config.garbage_collection_threshold, st.limit) {
            (Some(t), Some(limit)) => {
                let reserved = st.stats.reserved_bytes.all.current as f64;
                reserved + rounded as f64 > t * limit as f64
            }
            _ => false,
        }
    }

    /// A free block of another, idle stream (every event recorded on it now
    /// has completed), moved to stream `slot`.
    fn reuse_idle_cache(
        &self,
        st: &mut State<B>,
        slot: Slot,
        pool: Pool,
        rounded: usize,
    ) -> Option<BlockId> {
        for other in 0..st.streams.len() as Slot {
            if other == slot || st.index.is_empty(other, pool) {
                continue;
            }
            let Some(key) = st.find_fit(other, pool, rounded, self.config.max_split_size) else {
                continue;
            };
            if !self.stream_idle(st, other) {
                continue;
            }
            let id = key.id;
            st.index_remove(id);
            // only what the request takes moves to `slot`: the remainder
            // stays with the idle stream (had it moved, work on `slot` would
            // pin memory it never used until `slot` is idle)
            let kind = st.blocks.at(id).seg_kind;
            let rest = if should_split(pool, kind, key.size, rounded, self.config.max_split_size) {
                st.blocks.split(id, rounded)
            } else {
                None
            };
            // moved before the remainder is indexed, so that it cannot merge
            // back into the block taken
            st.blocks.at_mut(id).stream = slot;
            if let Some(rest) = rest {
                st.merge_and_index(rest);
            }
            st.stats.num_cross_stream_reuse += 1;
            return Some(id);
        }
        None
    }

    /// Obtains memory for `rounded` bytes on (slot, pool): `Ok(None)` when the
    /// backend or the cap says out of memory.
    fn grow(
        &self,
        st: &mut State<B>,
        slot: Slot,
        pool: Pool,
        rounded: usize,
    ) -> Result<Option<BlockId>, AllocError> {
        if self.segment_kind.is_expandable() {
            return self.grow_expandable(st, slot, pool, rounded);
        }
        let Some(size) = segment_size(rounded) else {
            return Ok(None);
        };
        if !within_limit(st, size) {
            return Ok(None);
        }
        let ptr = match self.backend.allocate(size) {
            Ok(p) => p,
            Err(e) => return self.backend_failure(e, "allocating a segment"),
        };
        let seg = Segment {
            base: ptr.0,
            size,
            mapped: size,
            pool,
            stream: slot,
            kind: SegmentKind::Fixed,
            head: NIL,
        };
        let Some((_, bid)) = st.add_segment(seg, BlockState::Free) else {
            // SAFETY: `ptr`/`size` is the segment just obtained; nothing used it.
            unsafe { self.backend.deallocate(ptr, size) };
            return Ok(None);
        };
        st.stats.num_device_alloc += 1;
        st.stats.segment.add(pool, 1);
        st.stats.reserved_bytes.add(pool, size);
        if size >= self.config.max_split_size {
            st.stats.oversize_segments.add(1);
        }
        st.trace.push(TraceAction::SegmentAlloc, ptr.0, size, slot);
        Ok(Some(bid))
    }

    pub(crate) fn backend_failure(
        &self,
        e: BackendError,
        action: &'static str,
    ) -> Result<Option<BlockId>, AllocError> {
        match e {
            BackendError::OutOfMemory => Ok(None),
            source => Err(AllocError::Backend {
                backend: self.backend.name().to_string(),
                action,
                source,
            }),
        }
    }

    /// Releases cached memory of `which` kind that is idle: freed before the
    /// sync that followed `synced` ([`LockRule::L1`]), or of a stream idle by its events
    /// now. Whether anything was released.
    pub(crate) fn release_cached(
        &self,
        st: &mut State<B>,
        which: Release,
        synced: Option<&SyncMark>,
    ) -> bool {
        let idle: Vec<bool> = (0..st.streams.len() as Slot)
            .map(|s| self.stream_idle(st, s))
            .collect();
        let before = synced.map(|m| m.tick);
        st.coalesce_idle(&idle, before);
        let min = match which {
            Release::Oversize => self.config.max_split_size,
            Release::All => 0,
        };
        let candidates: Vec<BlockId> = st
            .index
            .all()
            .filter(|&(_, _, k)| k.size >= min && block_idle(st.blocks.at(k.id), &idle, before))
            .map(|(_, _, k)| k.id)
            .collect();
        let before = st.stats.reserved_bytes.all.current;
        for id in candidates {
            if st
                .blocks
                .get(id)
                .is_some_and(|b| b.state == BlockState::Free)
            {
                self.release_block(st, id);
            }
        }
        st.stats.reserved_bytes.all.current < before
    }

    /// Gives the memory of free block `id` back: a whole fixed segment is
    /// deallocated; the whole pages inside a block of an expandable segment are
    /// unmapped.
    pub(crate) fn release_block(&self, st: &mut State<B>, id: BlockId) {
        let b = st.blocks.at(id).clone();
        let Some(seg) = st.segs.get(b.seg).cloned() else {
            return;
        };
        if seg.kind == SegmentKind::Fixed {
            if b.is_split() {
                return;
            }
            st.index_remove(id);
            st.blocks.remove(id);
            st.segs.remove(b.seg);
            // SAFETY: the segment's only block is free (no user holds it), and
            // the caller checked its stream is idle or synchronized.
            unsafe { self.backend.deallocate(DevicePtr(seg.base), seg.size) };
            st.stats.num_device_free += 1;
            st.stats.segment.sub(seg.pool, 1);
            st.stats.reserved_bytes.sub(seg.pool, seg.size);
            if seg.size >= self.config.max_split_size {
                st.stats.oversize_segments.sub(1);
            }
            st.trace
                .push(TraceAction::SegmentFree, seg.base, seg.size, b.stream);
            return;
        }
        self.unmap_pages(st, id, &b, seg.pool);
    }

    /// Releases every cached block, waiting for pending events first, and
    /// releases expandable reservations with nothing mapped.
    pub fn empty_cache(&self) {
        let (mut st, mark) = self.synchronize_unlocked(self.lock_drained());
        self.release_cached(&mut st, Release::All, mark.as_ref());
        self.release_empty_reservations(&mut st);
        self.unlock(st);
    }

    /// Releases the cached blocks of streams that are idle now, without
    /// waiting on any stream.
    pub fn trim(&self) {
        let mut st = self.lock_drained();
        st.process_pending(&self.backend);
        self.release_cached(&mut st, Release::All, None);
        self.release_empty_reservations(&mut st);
        self.unlock(st);
    }

    /// Registers a callback run when an allocation fails with out of memory
    /// (outside the engine's lock, so it may call the engine).
    pub fn add_oom_observer(&self, f: impl Fn(&OutOfMemory) + Send + Sync + 'static) {
        self.observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(f));
    }

    pub(crate) fn notify_oom(&self, e: &AllocError) {
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

    /// Builds the out-of-memory error and counts it.
    fn out_of_memory(
        &self,
        st: &mut State<B>,
        slot: Slot,
        requested: usize,
        rounded: usize,
    ) -> AllocError {
        st.stats.num_ooms += 1;
        st.trace.push_oom(
            || self.backend.mem_info().map_or(0, |m| m.free),
            rounded,
            slot,
        );
        let in_use = st.stats.allocated_bytes.all.current.max(0) as usize;
        let reserved = st.stats.reserved_bytes.all.current.max(0) as usize;
        let info = self.backend.mem_info();
        let remedy = if !self.segment_kind.is_expandable() && self.backend.page_size().is_some() {
            "try expandable_segments:true (cached memory is fragmented into fixed segments)"
                .to_string()
        } else if st.limit.is_some_and(|l| {
            let device = info.map_or(usize::MAX, |m| m.total);
            l < device && reserved.saturating_add(rounded) > l
        }) {
            // the cap, not the device, is what refuses the request
            "raise per_process_memory_fraction or max_reserved_mb, or free buffers you no longer need".to_string()
        } else if self.config.max_split_size == usize::MAX
            && !self.segment_kind.is_expandable()
            && reserved > in_use + rounded
        {
            "try max_split_size_mb:<size> to stop large cached blocks from being split".to_string()
        } else {
            "free buffers you no longer need or reduce the batch size; the device has no room for this request".to_string()
        };
        AllocError::OutOfMemory(Box::new(OutOfMemory {
            requested,
            rounded,
            stream: st
                .streams
                .handle(slot)
                .map_or_else(String::new, |s| format!("{s:?}")),
            in_use,
            cached: reserved.saturating_sub(in_use),
            largest_free_block: st.index.largest(),
            device_free: info.map(|m| m.free),
            device_total: info.map(|m| m.total),
            limit: st.limit,
            remedy,
        }))
    }
}

/// Whether free block `b` is idle: its stream is idle by its events now
/// (`idle`, by slot), or it was freed before a device-wide sync that started
/// at free tick `before` ([`LockRule::L1`]).
#[inline]
pub(crate) fn block_idle(b: &Block, idle: &[bool], before: Option<u64>) -> bool {
    idle.get(b.stream as usize).copied().unwrap_or(false) || before.is_some_and(|t| b.freed_at < t)
}

pub(crate) fn within_limit<B: DeviceBackend>(st: &State<B>, bytes: usize) -> bool {
    let reserved = st.stats.reserved_bytes.all.current.max(0) as usize;
    st.limit
        .is_none_or(|l| reserved.checked_add(bytes).is_some_and(|r| r <= l))
}

impl<B: DeviceBackend> State<B> {
    /// Adds `seg` with one block of `state` covering it; `None` when a table
    /// is full.
    pub(crate) fn add_segment(
        &mut self,
        mut seg: Segment,
        state: BlockState,
    ) -> Option<(SegmentId, BlockId)> {
        let block = Block {
            ptr: seg.base,
            size: seg.size,
            requested: 0,
            seg: 0,
            prev: NIL,
            next: NIL,
            state,
            stream: seg.stream,
            pool: seg.pool,
            seg_kind: seg.kind,
            scope: crate::block::NO_SCOPE,
            freed_at: 0,
        };
        let bid = self.blocks.insert(block)?;
        seg.head = bid;
        let Some(sid) = self.segs.insert(seg) else {
            self.blocks.remove(bid);
            return None;
        };
        self.blocks.at_mut(bid).seg = sid;
        Some((sid, bid))
    }

    /// Merges adjacent free blocks of different streams when both are idle
    /// ([`block_idle`]: an idle block is safe on any stream), so that whole
    /// segments and pages become releasable. The merged block keeps the
    /// first block's stream and the later of their free ticks.
    pub(crate) fn coalesce_idle(&mut self, idle: &[bool], before: Option<u64>) {
        let heads: Vec<BlockId> = self.segs.iter().map(|(_, s)| s.head).collect();
        for head in heads {
            let mut id = head;
            while id != NIL {
                let b = self.blocks.at(id);
                let next = b.next;
                // a join can leave the merged block next to a free block of
                // its stream, which then merges as any two such blocks (core:S2)
                let joinable = b.state == BlockState::Free
                    && self.blocks.get(next).is_some_and(|n| {
                        n.state == BlockState::Free
                            && (n.stream == b.stream
                                || block_idle(b, idle, before) && block_idle(n, idle, before))
                    });
                if joinable {
                    let slot = b.stream;
                    self.index_remove(id);
                    self.index_remove(next);
                    self.blocks.at_mut(next).stream = slot;
                    self.blocks.absorb_next(id);
                    self.index_insert(id);
                    continue;
                }
                id = next;
            }
        }
    }
}

/// Dropping the allocator gives all its memory back to the backend: no buffer
/// can outlive it (each borrows it), so every segment is fully free; pending
/// cross-stream uses are waited for first, as in `empty_cache`.
impl<B: DeviceBackend> Drop for CachingAllocator<B> {
    fn drop(&mut self) {
        self.empty_cache();
    }
}
