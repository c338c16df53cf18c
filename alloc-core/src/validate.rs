//! The invariant checker: verifies [`CoreInvariant::S1`]–[`CoreInvariant::S4`],
//! [`CoreInvariant::A1`], [`CoreInvariant::F1`], [`CoreInvariant::T1`],
//! [`CoreInvariant::T2`] and [`CoreInvariant::P1`] (defined on the variants)
//! and names the one that failed, with the values involved. Tests and fuzzers
//! call it after every step.

use crate::backend::DeviceBackend;
use crate::block::{Block, BlockState, NIL};
use crate::cache::{CachingAllocator, State};
use crate::free_index::Key;
use crate::segment::{Segment, SegmentId, SegmentKind};
use crate::size_class::{MIN_BLOCK, Pool, round_size, segment_size};
use crate::streams::Slot;

pub use crate::invariant::{CoreInvariant, LockRule};

/// A broken invariant: which one ([`CoreInvariant::S2`], displayed
/// `core:S2`) and the values that break it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant {invariant} ({}) violated: {detail}", invariant.name())]
pub struct InvariantViolation {
    /// The invariant that fails.
    pub invariant: CoreInvariant,
    /// What was found, with the values.
    pub detail: String,
}

fn fail(invariant: CoreInvariant, detail: String) -> Result<(), InvariantViolation> {
    Err(InvariantViolation { invariant, detail })
}

impl<B: DeviceBackend> CachingAllocator<B> {
    /// Checks every invariant of the engine's structures and statistics.
    pub fn validate(&self) -> Result<(), InvariantViolation> {
        let st = self.lock_drained();
        validate_state(&st, self.page)
    }

    /// The out-of-memory oracle, asked after an allocation of `bytes` failed
    /// with out of memory (and no fault was injected): `Err` with the figures
    /// when the request would have fit.
    ///
    /// The rule looks only at what no release can give back (memory under
    /// blocks in use) and at the limits (the cap and the device total):
    /// - expandable segments: the failure is legitimate only if the rounded
    ///   request, in whole pages, exceeds what the limits leave beside the
    ///   pages that in-use blocks touch;
    /// - fixed segments: only if no free run (maximal span of blocks not in
    ///   use, as it is after a device-wide sync) of a segment that must stay
    ///   fits the request under the oversize rule, and a new segment for it
    ///   does not fit beside the segments that must stay.
    pub fn check_oom_legitimate(&self, bytes: usize) -> Result<(), String> {
        let Some(rounded) = round_size(bytes, &self.config.roundup_power2_divisions) else {
            return Ok(());
        };
        let st = self.lock_drained();
        let device = self.backend.mem_info().map_or(usize::MAX, |m| m.total);
        let room = st.limit.map_or(device, |l| l.min(device));
        if self.segment_kind.is_expandable() {
            let page = self.page;
            let mut pages = std::collections::BTreeSet::new();
            for (_, seg) in st.segs.iter() {
                for b in st
                    .blocks
                    .chain(seg.head)
                    .filter(|b| b.state == BlockState::InUse)
                {
                    pages.extend(b.ptr / page..b.end().div_ceil(page));
                }
            }
            let held = pages.len().saturating_mul(page);
            let need = rounded.next_multiple_of(page);
            if held.saturating_add(need) <= room {
                return Err(format!(
                    "false out of memory: {need} B (rounded {rounded} B, in pages) fit beside the {held} B of pages in use within {room} B (cap {:?}, device {device} B)",
                    st.limit
                ));
            }
            return Ok(());
        }
        let pool = Pool::of(rounded);
        let max_split = self.config.max_split_size;
        let mut kept = 0usize;
        for (_, seg) in st.segs.iter() {
            if !st
                .blocks
                .chain(seg.head)
                .any(|b| b.state == BlockState::InUse)
            {
                continue;
            }
            kept = kept.saturating_add(seg.size);
            let mut run = 0usize;
            for b in st.blocks.chain(seg.head).chain(std::iter::once(&END)) {
                if b.state != BlockState::InUse && b.size > 0 {
                    run += b.size;
                    continue;
                }
                let fits = run >= rounded
                    && (if rounded < max_split {
                        run < max_split
                    } else {
                        run < rounded.saturating_add(crate::size_class::LARGE_SEGMENT)
                    });
                if seg.pool == pool && fits {
                    return Err(format!(
                        "false out of memory: a free run of {run} B in the segment at {:#x} fits {rounded} B",
                        seg.base
                    ));
                }
                run = 0;
            }
        }
        let new = segment_size(rounded).unwrap_or(usize::MAX);
        if kept.saturating_add(new) <= room {
            return Err(format!(
                "false out of memory: a new {new}-byte segment for {rounded} B fits beside the {kept} B of segments in use within {room} B (cap {:?}, device {device} B)",
                st.limit
            ));
        }
        Ok(())
    }
}

/// A sentinel "in use" block that ends the last run of a segment.
const END: Block = Block {
    ptr: 0,
    size: 0,
    requested: 0,
    seg: 0,
    prev: NIL,
    next: NIL,
    state: BlockState::InUse,
    stream: 0,
    pool: Pool::Small,
    seg_kind: SegmentKind::Fixed,
    scope: crate::block::NO_SCOPE,
    freed_at: 0,
};

#[derive(Default)]
struct Sums {
    in_use: [i64; 2],
    in_use_n: [i64; 2],
    active: [i64; 2],
    requested: [i64; 2],
    reserved: [i64; 2],
    segments: [i64; 2],
    split_free: [i64; 2],
    split_free_n: [i64; 2],
    free_n: usize,
    pending_n: usize,
}

fn validate_state<B: DeviceBackend>(st: &State<B>, page: usize) -> Result<(), InvariantViolation> {
    let mut sums = Sums::default();
    for (sid, seg) in st.segs.iter() {
        check_segment(st, sid, seg, page, &mut sums)?;
    }
    check_totals(st, &sums)
}

/// [`CoreInvariant::S1`]–[`CoreInvariant::S4`], [`CoreInvariant::A1`] and
/// [`CoreInvariant::F1`] for one segment, adding its blocks to `sums`.
fn check_segment<B: DeviceBackend>(
    st: &State<B>,
    sid: SegmentId,
    seg: &Segment,
    page: usize,
    sums: &mut Sums,
) -> Result<(), InvariantViolation> {
    let p = seg.pool.index();
    sums.segments[p] += 1;
    sums.reserved[p] += seg.mapped as i64;
    let (mut id, mut expect_ptr, mut prev, mut total, mut mapped) =
        (seg.head, seg.base, NIL, 0usize, 0usize);
    let mut last: Option<(BlockState, Slot)> = None;
    while id != NIL {
        let Some(b) = st.blocks.get(id) else {
            return fail(
                CoreInvariant::S1,
                format!("segment {sid} links to dead block {id}"),
            );
        };
        if b.seg != sid
            || b.ptr != expect_ptr
            || b.prev != prev
            || b.size == 0
            || b.pool != seg.pool
            || b.seg_kind != seg.kind
        {
            return fail(
                CoreInvariant::S1,
                format!(
                    "segment {sid} at {:#x}: block {id} (seg {}, ptr {:#x}, size {}, prev {}) expected ptr {expect_ptr:#x} prev {prev}",
                    seg.base, b.seg, b.ptr, b.size, b.prev
                ),
            );
        }
        if b.ptr % MIN_BLOCK != 0 {
            return fail(
                CoreInvariant::A1,
                format!("block {id} at {:#x} is not {MIN_BLOCK}-aligned", b.ptr),
            );
        }
        match (last, b.state) {
            (Some((BlockState::Free, s)), BlockState::Free) if s == b.stream => {
                return fail(
                    CoreInvariant::S2,
                    format!(
                        "free blocks at {:#x} and its predecessor (stream slot {s}) are adjacent and unmerged",
                        b.ptr
                    ),
                );
            }
            (Some((BlockState::Unmapped, _)), BlockState::Unmapped) => {
                return fail(
                    CoreInvariant::S3,
                    format!("unmapped blocks adjacent at {:#x}", b.ptr),
                );
            }
            _ => {}
        }
        if b.state == BlockState::Unmapped
            && (!seg.kind.is_expandable() || b.ptr % page != 0 || b.size % page != 0)
        {
            return fail(
                CoreInvariant::S3,
                format!(
                    "unmapped block at {:#x} size {} (expandable: {}, page {page})",
                    b.ptr,
                    b.size,
                    seg.kind.is_expandable()
                ),
            );
        }
        if b.state != BlockState::Unmapped {
            mapped += b.size;
        }
        let sz = b.size as i64;
        match b.state {
            BlockState::InUse => {
                sums.in_use[p] += sz;
                sums.in_use_n[p] += 1;
                sums.active[p] += sz;
                sums.requested[p] += b.requested as i64;
            }
            BlockState::Pending => {
                sums.pending_n += 1;
                sums.active[p] += sz;
                sums.requested[p] += b.requested as i64;
            }
            BlockState::Free => {
                sums.free_n += 1;
                let key = Key {
                    size: b.size,
                    ptr: b.ptr,
                    id,
                };
                if !st.index.contains(b.stream, seg.pool, &key) {
                    return fail(
                        CoreInvariant::F1,
                        format!(
                            "free block {id} at {:#x} ({} B, stream slot {}) is not in the free index",
                            b.ptr, b.size, b.stream
                        ),
                    );
                }
                if b.is_split() && seg.kind == SegmentKind::Fixed {
                    sums.split_free[p] += sz;
                    sums.split_free_n[p] += 1;
                }
            }
            BlockState::Unmapped => {}
        }
        last = Some((b.state, b.stream));
        total += b.size;
        expect_ptr = b.end();
        prev = id;
        id = b.next;
    }
    if total != seg.size {
        return fail(
            CoreInvariant::S1,
            format!(
                "segment {sid} at {:#x}: blocks sum to {total} B, segment is {} B",
                seg.base, seg.size
            ),
        );
    }
    if mapped != seg.mapped {
        return fail(
            CoreInvariant::S4,
            format!(
                "segment {sid} at {:#x}: mapped blocks sum to {mapped} B, segment says {} B",
                seg.base, seg.mapped
            ),
        );
    }
    Ok(())
}

/// [`CoreInvariant::F1`] (count), [`CoreInvariant::P1`] (its equations) and
/// [`CoreInvariant::T1`]/[`CoreInvariant::T2`]: the statistics against the sums over the blocks.
fn check_totals<B: DeviceBackend>(st: &State<B>, sums: &Sums) -> Result<(), InvariantViolation> {
    if st.index.len() != sums.free_n {
        return fail(
            CoreInvariant::F1,
            format!(
                "the free index holds {} keys, the segments {} free blocks",
                st.index.len(),
                sums.free_n
            ),
        );
    }
    if st.pending.len() != sums.pending_n {
        return fail(
            CoreInvariant::P1,
            format!(
                "{} blocks are pending, {} wait for events",
                sums.pending_n,
                st.pending.len()
            ),
        );
    }
    if let Err(what) = st.pending.check() {
        return fail(CoreInvariant::P1, what);
    }
    let s = &st.stats;
    for pool in [Pool::Small, Pool::Large] {
        let p = pool.index();
        let checks: [(CoreInvariant, &str, i64, i64); 8] = [
            (
                CoreInvariant::T1,
                "allocated_bytes",
                s.allocated_bytes.pool(pool).current,
                sums.in_use[p],
            ),
            (
                CoreInvariant::T1,
                "allocation",
                s.allocation.pool(pool).current,
                sums.in_use_n[p],
            ),
            (
                CoreInvariant::T1,
                "active_bytes",
                s.active_bytes.pool(pool).current,
                sums.active[p],
            ),
            (
                CoreInvariant::T1,
                "requested_bytes",
                s.requested_bytes.pool(pool).current,
                sums.requested[p],
            ),
            (
                CoreInvariant::T1,
                "reserved_bytes",
                s.reserved_bytes.pool(pool).current,
                sums.reserved[p],
            ),
            (
                CoreInvariant::T1,
                "segment",
                s.segment.pool(pool).current,
                sums.segments[p],
            ),
            (
                CoreInvariant::T2,
                "inactive_split_bytes",
                s.inactive_split_bytes.pool(pool).current,
                sums.split_free[p],
            ),
            (
                CoreInvariant::T2,
                "inactive_split",
                s.inactive_split.pool(pool).current,
                sums.split_free_n[p],
            ),
        ];
        for (invariant, name, stat, actual) in checks {
            if stat != actual {
                return fail(
                    invariant,
                    format!(
                        "{name}.{}.current is {stat}, the blocks say {actual}",
                        pool.key()
                    ),
                );
            }
        }
    }
    for (name, a) in [
        ("allocated_bytes", &s.allocated_bytes),
        ("reserved_bytes", &s.reserved_bytes),
        ("requested_bytes", &s.requested_bytes),
    ] {
        if a.all.current != a.small_pool.current + a.large_pool.current
            || a.all.peak < a.all.current
        {
            return fail(
                CoreInvariant::T1,
                format!(
                    "{name}: all {:?} vs small {:?} + large {:?}",
                    a.all, a.small_pool, a.large_pool
                ),
            );
        }
    }
    Ok(())
}
