//! The free index: the free blocks of each (stream, pool), ordered by size
//! then address, for best-fit search.
//!
//! # Invariants
//! - F1 the index holds exactly the free blocks, each under its stream and its
//!   segment's pool, keyed by its current size and address.

use std::collections::BTreeSet;

use crate::block::BlockId;
use crate::size_class::Pool;

/// (size, address, block) — ordered so that the first key ≥ (n, 0, 0) is the
/// best fit for n bytes (lowest address among equals).
pub(crate) type Key = (usize, usize, BlockId);

#[derive(Default)]
pub(crate) struct FreeIndex {
    sets: Vec<BTreeSet<Key>>,
}

#[inline]
fn slot_of(stream: u16, pool: Pool) -> usize {
    stream as usize * 2 + pool.index()
}

impl FreeIndex {
    /// Makes room for stream slot `stream`.
    pub(crate) fn ensure_stream(&mut self, stream: u16) {
        let need = slot_of(stream, Pool::Large) + 1;
        if self.sets.len() < need {
            self.sets.resize_with(need, BTreeSet::new);
        }
    }

    #[inline]
    pub(crate) fn insert(&mut self, stream: u16, pool: Pool, key: Key) {
        if let Some(s) = self.sets.get_mut(slot_of(stream, pool)) {
            s.insert(key);
        }
    }

    #[inline]
    pub(crate) fn remove(&mut self, stream: u16, pool: Pool, key: Key) -> bool {
        self.sets
            .get_mut(slot_of(stream, pool))
            .is_some_and(|s| s.remove(&key))
    }

    /// The free blocks of (stream, pool) of at least `size` bytes, smallest first.
    #[inline]
    pub(crate) fn at_least(
        &self,
        stream: u16,
        pool: Pool,
        size: usize,
    ) -> impl Iterator<Item = &Key> {
        self.sets
            .get(slot_of(stream, pool))
            .into_iter()
            .flat_map(move |s| s.range((size, 0, 0)..))
    }

    pub(crate) fn is_empty(&self, stream: u16, pool: Pool) -> bool {
        self.sets
            .get(slot_of(stream, pool))
            .is_none_or(BTreeSet::is_empty)
    }

    /// The largest free block of any stream and pool.
    pub(crate) fn largest(&self) -> usize {
        self.sets
            .iter()
            .filter_map(|s| s.last().map(|k| k.0))
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn len(&self) -> usize {
        self.sets.iter().map(BTreeSet::len).sum()
    }

    pub(crate) fn contains(&self, stream: u16, pool: Pool, key: &Key) -> bool {
        self.sets
            .get(slot_of(stream, pool))
            .is_some_and(|s| s.contains(key))
    }

    /// Every key with its (stream, pool).
    pub(crate) fn all(&self) -> impl Iterator<Item = (u16, Pool, Key)> + '_ {
        self.sets.iter().enumerate().flat_map(|(i, s)| {
            let pool = if i % 2 == 0 { Pool::Small } else { Pool::Large };
            s.iter().map(move |k| ((i / 2) as u16, pool, *k))
        })
    }
}
