//! Expandable segments: one address-space reservation per (stream, pool),
//! whose 2 MiB pages are mapped as blocks need them and unmapped when free.
//!
//! Growing maps the unmapped range that needs the fewest new pages (joining
//! the free block before it). Before mapping, free pages are unmapped
//! (largest free blocks first) until cached memory is at most
//! `max_cached_fraction` of reserved memory, so holes left by freed blocks do
//! not stay reserved. Map calls are batched (a minimum chunk per pool, or a
//! fraction of what is mapped).

use crate::backend::{BackendError, DeviceBackend, DevicePtr};
use crate::block::{Block, BlockId, BlockState, NIL};
use crate::cache::{CachingAllocator, State};
use crate::error::AllocError;
use crate::reclaim::within_limit;
use crate::segment::Segment;
use crate::size_class::Pool;
use crate::trace::TraceAction;

/// Expandable segments of the large pool map at least this much at once
/// (PyTorch's large segment size), so that growing by small steps costs few
/// map calls. Chosen with [`MIN_MAP_CHUNK_SMALL`], [`MAP_GROWTH_DIVISOR`] and
/// `max_cached_fraction` by replaying the shipped traces (benches/RESULTS.md).
pub const MIN_MAP_CHUNK: usize = 20 << 20;
/// Expandable segments of the small pool map at least this much at once.
pub const MIN_MAP_CHUNK_SMALL: usize = 4 << 20;
/// ... and at least 1/16 of what the segment has mapped (≤ 6.25 % more).
pub const MAP_GROWTH_DIVISOR: usize = 16;

/// Address space reserved per expandable segment when neither the device
/// total nor a cap is known (1 TiB; nothing is mapped until needed).
pub const DEFAULT_RESERVATION: usize = 1 << 40;

impl<B: DeviceBackend> CachingAllocator<B> {
    /// Maps pages of the expandable segment of (slot, pool) so that a free
    /// block of at least `rounded` bytes exists; returns it, out of the index.
    pub(crate) fn grow_expandable(
        &self,
        st: &mut State<B>,
        slot: u16,
        pool: Pool,
        rounded: usize,
    ) -> Result<Option<BlockId>, AllocError> {
        let si = slot as usize * 2 + pool.index();
        let mut seg = st.expandable.get(si).copied().unwrap_or(u32::MAX);
        if seg == u32::MAX {
            match self.reserve_expandable(st, slot, pool)? {
                Some(s) => seg = s,
                None => return Ok(None),
            }
        }
        self.unmap_excess_cache(st, rounded);
        let Some((bytes, uid)) = self.best_unmapped_range(st, seg, slot, pool, rounded) else {
            return Ok(None);
        };
        if !within_limit(st, bytes) {
            return Ok(None);
        }
        let ptr = st.blocks.at(uid).ptr;
        // SAFETY: `[ptr, ptr + bytes)` lies in unmapped block `uid` of a live
        // reservation (S3: unmapped blocks are page-aligned and never mapped).
        if let Err(e) = unsafe { self.backend.map(DevicePtr(ptr), bytes) } {
            return self.backend_failure(e, "mapping pages of an expandable segment");
        }
        if bytes < st.blocks.at(uid).size && st.blocks.split(uid, bytes).is_none() {
            // SAFETY: the pages were mapped just above and nothing uses them.
            unsafe { self.backend.unmap(DevicePtr(ptr), bytes) };
            return Ok(None);
        }
        let b = st.blocks.at_mut(uid);
        b.state = BlockState::Free;
        b.stream = slot;
        if let Some(s) = st.segs.get_mut(seg) {
            s.mapped += bytes;
        }
        st.stats.num_device_map += 1;
        st.stats.num_pages_mapped += (bytes / self.page) as i64;
        st.stats.reserved_bytes.add(pool, bytes);
        st.trace.push(TraceAction::Map, ptr, bytes, slot);
        let id = st.merge_and_index(uid);
        st.index_remove(id);
        Ok(Some(id))
    }

    /// The unmapped range of segment `seg` needing the fewest new pages for
    /// `rounded` bytes (lowest address first), counting a free block of
    /// `slot` just before it; at least the pool's minimum chunk or
    /// 1/[`MAP_GROWTH_DIVISOR`] of what is mapped is mapped at once, to keep
    /// map calls few. Returns (bytes to map, unmapped block).
    fn best_unmapped_range(
        &self,
        st: &State<B>,
        seg: u32,
        slot: u16,
        pool: Pool,
        rounded: usize,
    ) -> Option<(usize, BlockId)> {
        let page = self.page;
        let mapped = st.segs.get(seg).map_or(0, |s| s.mapped);
        let min_chunk = match pool {
            Pool::Small => MIN_MAP_CHUNK_SMALL,
            Pool::Large => MIN_MAP_CHUNK,
        };
        let chunk = min_chunk
            .max(mapped / MAP_GROWTH_DIVISOR)
            .next_multiple_of(page);
        let mut best: Option<(usize, BlockId)> = None;
        let mut id = st.segs.get(seg).map_or(NIL, |s| s.head);
        while id != NIL {
            let b = st.blocks.at(id);
            if b.state == BlockState::Unmapped {
                let left = match st.blocks.get(b.prev) {
                    Some(p) if p.state == BlockState::Free && p.stream == slot => p.size,
                    _ => 0,
                };
                if let Some(need) = rounded
                    .checked_sub(left)
                    .map(|n| n.next_multiple_of(page).max(page))
                    && need <= b.size
                    && let need = need.max(chunk).min(b.size)
                    && best.is_none_or(|(n, _)| need < n)
                {
                    best = Some((need, id));
                }
            }
            id = b.next;
        }
        best
    }

    /// Before mapping pages for `rounded` bytes: unmaps free pages of idle
    /// streams, largest blocks first, until cached memory is at most
    /// `max_cached_fraction` of reserved memory.
    fn unmap_excess_cache(&self, st: &mut State<B>, rounded: usize) {
        let allowed = |st: &State<B>| {
            let reserved = st.stats.reserved_bytes.all.current.max(0) as f64 + rounded as f64;
            (reserved * self.config.max_cached_fraction) as i64
        };
        let cached =
            |st: &State<B>| st.stats.reserved_bytes.all.current - st.stats.active_bytes.all.current;
        if cached(st) <= allowed(st) {
            return;
        }
        let mut free: Vec<(usize, u16, BlockId)> = st
            .index
            .all()
            .filter(|&(_, _, (size, _, id))| {
                size >= self.page && st.is_expandable(st.blocks.at(id))
            })
            .map(|(s, _, (size, _, id))| (size, s, id))
            .collect();
        free.sort_unstable_by(|a, b| b.cmp(a));
        let mut idle: Vec<Option<bool>> = vec![None; st.streams.len()];
        for (_, slot, id) in free {
            if cached(st) <= allowed(st) {
                break;
            }
            let Some(known) = idle.get_mut(slot as usize) else {
                continue;
            };
            if *known.get_or_insert_with(|| self.stream_idle(st, slot)) {
                self.release_block(st, id);
            }
        }
    }

    fn reserve_expandable(
        &self,
        st: &mut State<B>,
        slot: u16,
        pool: Pool,
    ) -> Result<Option<u32>, AllocError> {
        // The whole device (or the cap, if smaller): address space only.
        let device = self.backend.mem_info().map(|m| m.total);
        let total = match (st.limit, device) {
            (Some(l), Some(d)) => l.min(d),
            (l, d) => l.or(d).unwrap_or(DEFAULT_RESERVATION),
        };
        let Some(size) = total.checked_next_multiple_of(self.page) else {
            return Ok(None);
        };
        let ptr = match self.backend.reserve(size) {
            Ok(p) => p,
            Err(BackendError::OutOfMemory) => return Ok(None),
            Err(source) => {
                return Err(AllocError::Backend {
                    backend: self.backend.name().to_string(),
                    action: "reserving address space",
                    source,
                });
            }
        };
        let seg = Segment {
            base: ptr.0,
            size,
            mapped: 0,
            pool,
            stream: slot,
            expandable: true,
            head: NIL,
        };
        let Some((sid, _)) = st.add_segment(seg, BlockState::Unmapped) else {
            // SAFETY: the reservation was just made and has nothing mapped.
            unsafe { self.backend.release(ptr, size) };
            return Ok(None);
        };
        if let Some(e) = st.expandable.get_mut(slot as usize * 2 + pool.index()) {
            *e = sid;
        }
        st.stats.segment.add(pool, 1);
        Ok(Some(sid))
    }

    pub(crate) fn release_empty_reservations(&self, st: &mut State<B>) {
        let empty: Vec<u32> = st
            .segs
            .iter()
            .filter(|(_, s)| s.expandable && s.mapped == 0)
            .map(|(i, _)| i)
            .collect();
        for sid in empty {
            let Some(seg) = st.segs.remove(sid) else {
                continue;
            };
            st.blocks.remove(seg.head);
            for e in st.expandable.iter_mut().filter(|e| **e == sid) {
                *e = u32::MAX;
            }
            // SAFETY: the reservation has nothing mapped (mapped == 0) and is
            // no longer reachable from the engine.
            unsafe { self.backend.release(DevicePtr(seg.base), seg.size) };
            st.stats.segment.sub(seg.pool, 1);
        }
    }

    /// Unmaps the whole pages inside free block `id` (copied in `b`) of an
    /// expandable segment; the partial pages at its ends stay mapped and free.
    pub(crate) fn unmap_pages(&self, st: &mut State<B>, id: BlockId, b: &Block, pool: Pool) {
        let start = b.ptr.next_multiple_of(self.page);
        let end = b.end() / self.page * self.page;
        if end <= start {
            return;
        }
        st.index_remove(id);
        let mut mid = id;
        if start > b.ptr {
            match st.blocks.split(id, start - b.ptr) {
                Some(m) => {
                    st.index_insert(id);
                    mid = m;
                }
                None => {
                    st.index_insert(id);
                    return;
                }
            }
        }
        if end < b.end() {
            match st.blocks.split(mid, end - start) {
                Some(tail) => st.index_insert(tail),
                None => {
                    st.merge_and_index(mid);
                    return;
                }
            }
        }
        // SAFETY: `[start, end)` is whole pages of free block `mid`, all mapped
        // (S3/S4), and the caller checked its stream is idle or synchronized.
        unsafe { self.backend.unmap(DevicePtr(start), end - start) };
        st.blocks.at_mut(mid).state = BlockState::Unmapped;
        if let Some(s) = st.segs.get_mut(b.seg) {
            s.mapped -= end - start;
        }
        st.stats.num_device_unmap += 1;
        st.stats.reserved_bytes.sub(pool, end - start);
        st.trace
            .push(TraceAction::Unmap, start, end - start, b.stream);
        st.merge_unmapped(mid);
    }
}

impl<B: DeviceBackend> State<B> {
    /// Merges unmapped block `id` with unmapped neighbours (S3).
    pub(crate) fn merge_unmapped(&mut self, mut id: BlockId) {
        let next = self.blocks.at(id).next;
        if next != NIL && self.blocks.at(next).state == BlockState::Unmapped {
            self.blocks.absorb_next(id);
        }
        let prev = self.blocks.at(id).prev;
        if prev != NIL && self.blocks.at(prev).state == BlockState::Unmapped {
            self.blocks.absorb_next(prev);
            id = prev;
        }
        let _ = id;
    }
}
