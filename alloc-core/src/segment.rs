//! Segments: memory held from the backend. A fixed segment is one backend
//! allocation; an expandable segment is an address-space reservation whose
//! pages are mapped as needed.
//!
//! # Invariants
//! - S4 a segment's `mapped` bytes equal the sizes of its blocks that are not
//!   unmapped; a fixed segment is fully mapped.
//! - T1 `reserved_bytes` = Σ `mapped` over segments.

use crate::block::{BlockId, Slot};
use crate::size_class::Pool;

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
    pub(crate) expandable: bool,
    /// The block at `base`.
    pub(crate) head: BlockId,
}

/// All live segments.
#[derive(Default)]
pub(crate) struct SegmentTable {
    slots: Vec<Option<Segment>>,
    vacant: Vec<u32>,
}

impl SegmentTable {
    pub(crate) fn insert(&mut self, s: Segment) -> Option<u32> {
        if let Some(id) = self.vacant.pop() {
            self.slots[id as usize] = Some(s);
            return Some(id);
        }
        let id = u32::try_from(self.slots.len())
            .ok()
            .filter(|&i| i != u32::MAX)?;
        self.slots.push(Some(s));
        Some(id)
    }

    pub(crate) fn remove(&mut self, id: u32) -> Option<Segment> {
        let s = self.slots.get_mut(id as usize)?.take()?;
        self.vacant.push(id);
        Some(s)
    }

    #[inline]
    pub(crate) fn get(&self, id: u32) -> Option<&Segment> {
        self.slots.get(id as usize)?.as_ref()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: u32) -> Option<&mut Segment> {
        self.slots.get_mut(id as usize)?.as_mut()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Segment)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.as_ref()?)))
    }
}
