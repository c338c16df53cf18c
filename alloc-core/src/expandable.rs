//! Expandable segments: address-space reservations per (stream, pool),
//! whose pages are mapped as blocks need them and unmapped when free.
//!
//! Growing maps the unmapped range that needs the fewest new pages (joining
//! the free block of the stream before it), in any reservation of the
//! (stream, pool); when none has room (address space fragmented by live
//! blocks), another reservation is made, as PyTorch adds segments.
//!
//! What is mapped, and when cached pages are unmapped, follows from what
//! efficiency measures (peak requested ÷ peak reserved). The *bound* is the
//! reserved peak so far, or the requested peak plus 1/32 of it if that is
//! more (`reserve_bound`):
//! - cached pages are unmapped (just the pages needed, the last pages of the
//!   largest idle free blocks first) only when a map would otherwise take
//!   reserved memory past the bound or the cap: below it, keeping them costs
//!   nothing and saves map calls; at it, they are the cheapest bytes to give
//!   back. So no unmap happens on the ordinary path unless it avoids a new
//!   reserved peak (or an out of memory). With several streams, adjacent
//!   free blocks of idle streams are joined first (a block of an idle stream
//!   is safe on any stream): cross-stream reuse leaves blocks of different
//!   streams side by side, and unjoined, their pages were never whole;
//! - a grow maps a chunk ([`MIN_MAP_CHUNK`], or 1/16 of what is mapped) up
//!   to the bound; past the bound, at most 1/[`FRONT_SLACK_DIVISOR`] of what
//!   is reserved beyond the need; never past the cap; a chunk the device
//!   refuses is retried at the exact need.
//!
//! Reservations are address space only, sized to the device (1.125× its
//! total, as PyTorch), never to the cap: a cap changed later
//! (`set_memory_fraction`) applies at the next map.

#[cfg(doc)]
use crate::CoreInvariant;
use crate::backend::{BackendError, DeviceBackend, DevicePtr};
use crate::block::{Block, BlockId, BlockState, NIL};
use crate::cache::{CachingAllocator, State};
use crate::error::AllocError;
use crate::reclaim::within_limit;
use crate::segment::{Segment, SegmentId, SegmentKind};
use crate::size_class::Pool;
use crate::streams::Slot;
use crate::trace::TraceAction;

/// Expandable segments of the large pool map at least this much at once
/// where it stays under the reserved peak (PyTorch's large segment size), so
/// that growing by small steps costs few map calls.
pub const MIN_MAP_CHUNK: usize = 20 << 20;
/// Expandable segments of the small pool map at least this much at once
/// (PyTorch's small segment size).
pub const MIN_MAP_CHUNK_SMALL: usize = 2 << 20;
/// ... and at least 1/16 of what the segment has mapped (≤ 6.25 % more).
pub const MAP_GROWTH_DIVISOR: usize = 16;

/// At the reserved peak a grow maps at most 1/32 of what is reserved beyond
/// its need, so the unused tail of the last chunk can cost the efficiency
/// measure (peak requested ÷ peak reserved) at most about 3 %.
pub const FRONT_SLACK_DIVISOR: usize = 32;

/// What reserved memory may reach before cached pages are unmapped, and up
/// to which a grow may map more than it needs: the reserved peak so far, or
/// the requested peak plus 1/[`SLACK_DIVISOR`] of it if that is more. The
/// slack is what the efficiency measure allows: reserved memory set by this
/// bound keeps peak requested ÷ peak reserved ≥ 32/33 ≈ 0.97.
fn reserve_bound<B: DeviceBackend>(st: &State<B>) -> usize {
    let reserved = st.stats.reserved_bytes.all.peak.max(0) as usize;
    let requested = st.stats.requested_bytes.all.peak.max(0) as usize;
    reserved.max(requested.saturating_add(requested / SLACK_DIVISOR))
}

/// The slack over the requested peak that cached memory may use (1/32).
pub const SLACK_DIVISOR: usize = 32;

/// Address space reserved per expandable segment when the device total is
/// not known (1 TiB; nothing is mapped until needed).
pub const DEFAULT_RESERVATION: usize = 1 << 40;

/// The expandable segments (reservations) of each (stream slot, pool), in
/// the order they were reserved.
#[derive(Default)]
pub(crate) struct Reservations {
    /// One list per (stream slot, pool), at [`Reservations::list_index`].
    lists: Vec<Vec<SegmentId>>,
}

impl Reservations {
    #[inline]
    fn list_index(slot: Slot, pool: Pool) -> usize {
        slot as usize * 2 + pool.index()
    }

    /// Makes room for stream slot `slot`.
    pub(crate) fn ensure_stream(&mut self, slot: Slot) {
        let need = (slot as usize + 1) * 2;
        if self.lists.len() < need {
            self.lists.resize_with(need, Vec::new);
        }
    }

    /// The reservations of (slot, pool).
    fn of(&self, slot: Slot, pool: Pool) -> &[SegmentId] {
        self.lists
            .get(Self::list_index(slot, pool))
            .map_or(&[][..], Vec::as_slice)
    }

    fn push(&mut self, slot: Slot, pool: Pool, seg: SegmentId) {
        if let Some(list) = self.lists.get_mut(Self::list_index(slot, pool)) {
            list.push(seg);
        }
    }

    fn remove(&mut self, slot: Slot, pool: Pool, seg: SegmentId) {
        if let Some(list) = self.lists.get_mut(Self::list_index(slot, pool)) {
            list.retain(|&e| e != seg);
        }
    }

    /// Moves the reservations of slot `from` to slot `to` (a forgotten
    /// stream's, to the orphan slot).
    pub(crate) fn move_all(&mut self, from: Slot, to: Slot) {
        for pool in [Pool::Small, Pool::Large] {
            let list = self
                .lists
                .get_mut(Self::list_index(from, pool))
                .map(std::mem::take)
                .unwrap_or_default();
            if let Some(dst) = self.lists.get_mut(Self::list_index(to, pool)) {
                dst.extend(list);
            }
        }
    }
}

/// An unmapped range a grow can map: the unmapped block, how many bytes of
/// it the request needs (whole pages) and how large it is.
#[derive(Clone, Copy)]
struct Range {
    seg: SegmentId,
    uid: BlockId,
    exact: usize,
    room: usize,
}

impl<B: DeviceBackend> CachingAllocator<B> {
    /// Maps pages of an expandable segment of (slot, pool) so that a free
    /// block of at least `rounded` bytes exists; returns it, out of the index.
    pub(crate) fn grow_expandable(
        &self,
        st: &mut State<B>,
        slot: Slot,
        pool: Pool,
        rounded: usize,
    ) -> Result<Option<BlockId>, AllocError> {
        let Some(upper) = rounded.checked_next_multiple_of(self.page) else {
            return Ok(None);
        };
        if self.best_range(st, slot, pool, rounded).is_none()
            && self.reserve_expandable(st, slot, pool, upper)?.is_none()
        {
            return Ok(None);
        }
        let Some(mut r) = self.best_range(st, slot, pool, rounded) else {
            return Ok(None);
        };
        let keep = st.blocks.at(r.uid).prev;
        if self.unmap_to_stay_under_peak(st, r.exact, keep) {
            // unmapped pages may have joined the chosen range: look again
            match self.best_range(st, slot, pool, rounded) {
                Some(again) => r = again,
                None => return Ok(None),
            }
        }
        if !within_limit(st, r.exact) {
            return Ok(None);
        }
        let chunk = self.chunk(st, pool, r);
        let ptr = st.blocks.at(r.uid).ptr;
        let mut bytes = chunk;
        // SAFETY: `[ptr, ptr + bytes)` lies in unmapped block `uid` of a live
        // reservation (core:S3: unmapped blocks are page-aligned and never mapped).
        let mut mapped = unsafe { self.backend.map(DevicePtr(ptr), bytes) };
        if mapped == Err(BackendError::OutOfMemory) && chunk > r.exact {
            bytes = r.exact;
            // SAFETY: as above, a shorter prefix of the same unmapped block.
            mapped = unsafe { self.backend.map(DevicePtr(ptr), bytes) };
        }
        if let Err(e) = mapped {
            return self.backend_failure(e, "mapping pages of an expandable segment");
        }
        let uid = r.uid;
        if bytes < st.blocks.at(uid).size && st.blocks.split(uid, bytes).is_none() {
            // SAFETY: the pages were mapped just above and nothing uses them.
            unsafe { self.backend.unmap(DevicePtr(ptr), bytes) };
            st.stats.num_device_free += 1;
            st.stats.num_device_alloc += 1;
            return Ok(None);
        }
        let b = st.blocks.at_mut(uid);
        b.state = BlockState::Free;
        b.stream = slot;
        // fresh pages: no work ever used them
        b.freed_at = 0;
        if let Some(s) = st.segs.get_mut(r.seg) {
            s.mapped += bytes;
        }
        st.stats.num_device_alloc += 1;
        st.stats.num_device_map += 1;
        st.stats.num_pages_mapped += (bytes / self.page) as i64;
        st.stats.reserved_bytes.add(pool, bytes);
        st.trace.push(TraceAction::Map, ptr, bytes, slot);
        let id = st.merge_and_index(uid);
        st.index_remove(id);
        Ok(Some(id))
    }

    /// How much of range `r` to map: a chunk where it stays under the
    /// reserved peak and the cap, else the exact need.
    fn chunk(&self, st: &State<B>, pool: Pool, r: Range) -> usize {
        let mapped: usize = st.stats.reserved_bytes.pool(pool).current.max(0) as usize;
        let min_chunk = match pool {
            Pool::Small => MIN_MAP_CHUNK_SMALL,
            Pool::Large => MIN_MAP_CHUNK,
        };
        let reserved = st.stats.reserved_bytes.all.current.max(0) as usize;
        let bound = reserve_bound(st);
        let wanted = if reserved.saturating_add(r.exact) <= bound {
            // under the bound: a chunk, but not past the bound
            let chunk = min_chunk
                .max(mapped / MAP_GROWTH_DIVISOR)
                .next_multiple_of(self.page);
            chunk.min((bound - reserved) / self.page * self.page)
        } else {
            // past it: a chunk whose unused tail is at most
            // 1/FRONT_SLACK_DIVISOR of what is reserved
            min_chunk
                .min(reserved / FRONT_SLACK_DIVISOR)
                .next_multiple_of(self.page)
        };
        // never past the cap (the caller checked the exact need fits)
        let cap_room = st.limit.map_or(usize::MAX, |l| {
            l.saturating_sub(reserved) / self.page * self.page
        });
        wanted.min(cap_room).clamp(r.exact, r.room)
    }

    /// The unmapped range of the reservations of (slot, pool) needing the
    /// fewest new pages for `rounded` bytes (lowest address first), counting
    /// a free block of `slot` just before it.
    fn best_range(&self, st: &State<B>, slot: Slot, pool: Pool, rounded: usize) -> Option<Range> {
        let page = self.page;
        let mut best: Option<Range> = None;
        for &seg in st.reservations.of(slot, pool) {
            let mut id = st.segs.get(seg).map_or(NIL, |s| s.head);
            while id != NIL {
                let b = st.blocks.at(id);
                if b.state == BlockState::Unmapped {
                    let left = match st.blocks.get(b.prev) {
                        Some(p) if p.state == BlockState::Free && p.stream == slot => p.size,
                        _ => 0,
                    };
                    if let Some(exact) = rounded
                        .checked_sub(left)
                        .map(|n| n.next_multiple_of(page).max(page))
                        && exact <= b.size
                        && best.is_none_or(|r| exact < r.exact)
                    {
                        best = Some(Range {
                            seg,
                            uid: id,
                            exact,
                            room: b.size,
                        });
                    }
                }
                id = b.next;
            }
        }
        best
    }

    /// Before mapping `need` bytes: if that would raise the reserved peak or
    /// pass the cap, unmaps just enough free pages of idle streams (the last
    /// pages of the largest free blocks first, never block `keep`, which the
    /// grow extends) that it would not. Whether anything was unmapped.
    ///
    /// `keep` is chosen before idle blocks are joined: when the joining
    /// merges it into a block of another stream, the merged block is no
    /// longer protected and its last pages may be unmapped and the range
    /// chosen again. Protecting the merged block instead was measured worse
    /// (bert_serving with two streams taking turns every 500 allocations:
    /// efficiency 0.9465 against 0.9717), so the unmap can pick the largest
    /// idle block even when it borders the grow.
    fn unmap_to_stay_under_peak(&self, st: &mut State<B>, need: usize, keep: BlockId) -> bool {
        let target = {
            let peak = reserve_bound(st);
            st.limit.map_or(peak, |l| l.min(peak))
        };
        let over = |st: &State<B>| {
            let reserved = st.stats.reserved_bytes.all.current.max(0) as usize;
            reserved.saturating_add(need) > target
        };
        if !over(st) {
            return false;
        }
        let mut idle: Vec<Option<bool>> = vec![None; st.streams.len()];
        if st.streams.len() > 1 {
            let now: Vec<bool> = (0..st.streams.len() as Slot)
                .map(|s| self.stream_idle(st, s))
                .collect();
            st.coalesce_idle(&now, None);
            idle = now.into_iter().map(Some).collect();
        }
        let mut free: Vec<(usize, Slot, BlockId)> = st
            .index
            .all()
            .filter(|&(_, _, k)| {
                k.size >= self.page && k.id != keep && st.blocks.at(k.id).seg_kind.is_expandable()
            })
            .map(|(s, _, k)| (k.size, s, k.id))
            .collect();
        free.sort_unstable_by(|a, b| b.cmp(a));
        for (_, slot, id) in free {
            let reserved = st.stats.reserved_bytes.all.current.max(0) as usize;
            let deficit = reserved.saturating_add(need).saturating_sub(target);
            if deficit == 0 {
                break;
            }
            let Some(known) = idle.get_mut(slot as usize) else {
                continue;
            };
            if *known.get_or_insert_with(|| self.stream_idle(st, slot)) {
                let b = st.blocks.at(id).clone();
                let pool = b.pool;
                self.unmap_tail_pages(st, id, &b, pool, deficit);
            }
        }
        true
    }

    /// Reserves address space for another expandable segment of (slot,
    /// pool): 1.125× the device total (or [`DEFAULT_RESERVATION`]), at least
    /// `need` bytes; only `need` when the larger reservation is refused.
    fn reserve_expandable(
        &self,
        st: &mut State<B>,
        slot: Slot,
        pool: Pool,
        need: usize,
    ) -> Result<Option<SegmentId>, AllocError> {
        let device = self.backend.mem_info().map(|m| m.total);
        let wanted = device
            .map_or(DEFAULT_RESERVATION, |d| d.saturating_add(d / 8))
            .max(need)
            .checked_next_multiple_of(self.page);
        let mut ptr = Err(BackendError::OutOfMemory);
        let mut size = need;
        for s in [wanted, Some(need)].into_iter().flatten() {
            size = s;
            ptr = self.backend.reserve(s);
            if ptr != Err(BackendError::OutOfMemory) {
                break;
            }
        }
        let ptr = match ptr {
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
            kind: SegmentKind::Expandable,
            head: NIL,
        };
        let Some((sid, _)) = st.add_segment(seg, BlockState::Unmapped) else {
            // SAFETY: the reservation was just made and has nothing mapped.
            unsafe { self.backend.release(ptr, size) };
            return Ok(None);
        };
        st.reservations.push(slot, pool, sid);
        st.stats.segment.add(pool, 1);
        Ok(Some(sid))
    }

    pub(crate) fn release_empty_reservations(&self, st: &mut State<B>) {
        let empty: Vec<SegmentId> = st
            .segs
            .iter()
            .filter(|(_, s)| s.kind.is_expandable() && s.mapped == 0)
            .map(|(i, _)| i)
            .collect();
        for sid in empty {
            let Some(seg) = st.segs.remove(sid) else {
                continue;
            };
            st.blocks.remove(seg.head);
            st.reservations.remove(seg.stream, seg.pool, sid);
            // SAFETY: the reservation has nothing mapped (mapped == 0) and is
            // no longer reachable from the engine.
            unsafe { self.backend.release(DevicePtr(seg.base), seg.size) };
            st.stats.segment.sub(seg.pool, 1);
        }
    }

    /// Unmaps the whole pages inside free block `id` (copied in `b`) of an
    /// expandable segment; the partial pages at its ends stay mapped and free.
    pub(crate) fn unmap_pages(&self, st: &mut State<B>, id: BlockId, b: &Block, pool: Pool) {
        self.unmap_tail_pages(st, id, b, pool, usize::MAX);
    }

    /// Unmaps at most `max` bytes of the whole pages inside free block `id`
    /// (copied in `b`), taking the last pages (next to the unmapped range
    /// that usually follows, so unmapped space stays contiguous).
    pub(crate) fn unmap_tail_pages(
        &self,
        st: &mut State<B>,
        id: BlockId,
        b: &Block,
        pool: Pool,
        max: usize,
    ) {
        let end = b.end() / self.page * self.page;
        let first = b.ptr.next_multiple_of(self.page);
        let take = max
            .checked_next_multiple_of(self.page)
            .unwrap_or(usize::MAX);
        let start = first.max(end.saturating_sub(take));
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
        // (core:S3, core:S4), and the caller checked its stream is idle or synchronized.
        unsafe { self.backend.unmap(DevicePtr(start), end - start) };
        st.blocks.at_mut(mid).state = BlockState::Unmapped;
        if let Some(s) = st.segs.get_mut(b.seg) {
            s.mapped -= end - start;
        }
        st.stats.num_device_unmap += 1;
        st.stats.num_device_free += 1;
        st.stats.reserved_bytes.sub(pool, end - start);
        st.trace
            .push(TraceAction::Unmap, start, end - start, b.stream);
        st.merge_unmapped(mid);
    }
}

impl<B: DeviceBackend> State<B> {
    /// Merges unmapped block `id` with unmapped neighbours ([`CoreInvariant::S3`]).
    pub(crate) fn merge_unmapped(&mut self, id: BlockId) {
        let next = self.blocks.at(id).next;
        if next != NIL && self.blocks.at(next).state == BlockState::Unmapped {
            self.blocks.absorb_next(id);
        }
        let prev = self.blocks.at(id).prev;
        if prev != NIL && self.blocks.at(prev).state == BlockState::Unmapped {
            self.blocks.absorb_next(prev);
        }
    }
}
