//! Segments: memory held from the backend. A fixed segment is one backend
//! allocation; an expandable segment is an address-space reservation whose
//! pages are mapped as needed.
//!
//! # Invariants
//! Segments keep [`CoreInvariant::S4`] (mapped bytes match the blocks), and
//! their `mapped` bytes sum to `reserved_bytes` ([`CoreInvariant::T1`]); the
//! definitions are on the variants.

#[cfg(doc)]
use crate::CoreInvariant;
use crate::block::BlockId;
use crate::size_class::Pool;
use crate::streams::Slot;

/// Index of a segment in the [`SegmentTable`].
pub(crate) type SegmentId = u32;

/// How a segment holds memory: the one place the word "expandable" names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegmentKind {
    /// One backend allocation, fully mapped, released whole.
    Fixed,
    /// An address-space reservation whose pages are mapped as blocks need
    /// them and unmapped when free (`expandable.rs`).
    Expandable,
}

impl SegmentKind {
    /// Whether this is [`SegmentKind::Expandable`].
    #[inline]
    pub(crate) fn is_expandable(self) -> bool {
        self == SegmentKind::Expandable
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub(crate) base: usize,
    /// Bytes of the allocation, or of the reservation.
    pub(crate) size: usize,
    /// Bytes held from the backend (= `size` for fixed segments).
    pub(crate) mapped: usize,
    pub(crate) pool: Pool,
    /// Slot of the stream the segment was created for.
    pub(crate) stream: Slot,
    pub(crate) kind: SegmentKind,
    /// The block at `base`.
    pub(crate) head: BlockId,
}

/// All live segments.
#[derive(Default)]
pub(crate) struct SegmentTable {
    entries: Vec<Option<Segment>>,
    vacant: Vec<SegmentId>,
}

impl SegmentTable {
    pub(crate) fn insert(&mut self, s: Segment) -> Option<SegmentId> {
        if let Some(id) = self.vacant.pop() {
            self.entries[id as usize] = Some(s);
            return Some(id);
        }
        let id = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != u32::MAX)?;
        self.entries.push(Some(s));
        Some(id)
    }

    pub(crate) fn remove(&mut self, id: SegmentId) -> Option<Segment> {
        let s = self.entries.get_mut(id as usize)?.take()?;
        self.vacant.push(id);
        Some(s)
    }

    #[inline]
    pub(crate) fn get(&self, id: SegmentId) -> Option<&Segment> {
        self.entries.get(id as usize)?.as_ref()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: SegmentId) -> Option<&mut Segment> {
        self.entries.get_mut(id as usize)?.as_mut()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (SegmentId, &Segment)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as SegmentId, s.as_ref()?)))
    }
}
