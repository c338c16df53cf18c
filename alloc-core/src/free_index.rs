//! The free index: the free blocks of each (stream, pool), for best-fit
//! search in (size, address) order.
//!
//! Blocks are kept in size bins (one bin per 512 B step up to 1 MiB, then 16
//! bins per power of two), each a short vector sorted by (size, address), with
//! a bitmap of non-empty bins; the best fit is the first key ≥ the request in
//! its own bin, else the first key of the next non-empty bin. Insert and
//! remove are a binary search and a short move, so a cache hit never walks a
//! tree.
//!
//! # Invariants
//! The index keeps [`CoreInvariant::F1`] (it is the free blocks); the
//! definition is on the variant.

#[cfg(doc)]
use crate::CoreInvariant;
use crate::block::BlockId;
use crate::size_class::{MIN_BLOCK, Pool, SMALL_SIZE};
use crate::streams::Slot;

/// A free block as the index holds it, ordered by (size, address, id) (the
/// fields' order), so that the first key of at least n bytes is the best fit
/// for n bytes (lowest address among equals).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    /// The block's size.
    pub(crate) size: usize,
    /// The block's address.
    pub(crate) ptr: usize,
    /// The block.
    pub(crate) id: BlockId,
}

/// Exact bins: one per 512 B step up to [`SMALL_SIZE`].
const EXACT_BINS: usize = SMALL_SIZE / MIN_BLOCK;
/// Bins per power of two above [`SMALL_SIZE`].
const SUB_BINS: usize = 16;
const SUB_SHIFT: u32 = SUB_BINS.trailing_zeros();
/// Powers of two above 1 MiB (2^20) that a `usize` size can reach.
const LOG_BINS: usize = (usize::BITS as usize - 20) * SUB_BINS;
const BINS: usize = EXACT_BINS + LOG_BINS;
const WORDS: usize = BINS.div_ceil(64);
const _: () = assert!(
    WORDS <= 64,
    "the summary word covers at most 64 bitmap words"
);

/// The bin of a size (a multiple of 512, at least 512).
#[inline]
fn bin_of(size: usize) -> usize {
    if size <= SMALL_SIZE {
        return (size / MIN_BLOCK).saturating_sub(1);
    }
    let e = usize::BITS - 1 - size.leading_zeros(); // ≥ 20
    let sub = (size >> (e - SUB_SHIFT)) & (SUB_BINS - 1);
    (EXACT_BINS + (e as usize - 20) * SUB_BINS + sub).min(BINS - 1)
}

/// The free blocks of one (stream, pool).
struct Bins {
    bins: Vec<Vec<Key>>,
    nonempty: [u64; WORDS],
    /// Bit w set when `nonempty[w]` is non-zero.
    summary: u64,
    len: usize,
}

impl Bins {
    fn new() -> Self {
        Bins {
            bins: Vec::new(),
            nonempty: [0; WORDS],
            summary: 0,
            len: 0,
        }
    }

    #[inline]
    fn insert(&mut self, key: Key) {
        let b = bin_of(key.size);
        if self.bins.len() <= b {
            self.bins.resize_with(b + 1, Vec::new);
        }
        let v = &mut self.bins[b];
        let at = v.partition_point(|k| *k < key);
        if v.get(at) == Some(&key) {
            return;
        }
        v.insert(at, key);
        self.nonempty[b / 64] |= 1 << (b % 64);
        self.summary |= 1 << (b / 64);
        self.len += 1;
    }

    #[inline]
    fn remove(&mut self, key: Key) -> bool {
        let b = bin_of(key.size);
        let Some(v) = self.bins.get(b) else {
            return false;
        };
        let at = v.partition_point(|k| *k < key);
        v.get(at) == Some(&key) && self.remove_at(b, at).is_some()
    }

    /// Removes the key at position `pos` of bin `b`.
    #[inline]
    fn remove_at(&mut self, b: usize, pos: usize) -> Option<Key> {
        let v = self.bins.get_mut(b)?;
        if pos >= v.len() {
            return None;
        }
        let key = v.remove(pos);
        if v.is_empty() {
            self.nonempty[b / 64] &= !(1 << (b % 64));
            if self.nonempty[b / 64] == 0 {
                self.summary &= !(1 << (b / 64));
            }
        }
        self.len -= 1;
        Some(key)
    }

    /// Removes and returns the first key ≥ `size` (in (size, address) order)
    /// that `verdict` takes, skipping those it skips, giving up at a stop.
    #[inline]
    fn take_first(&mut self, size: usize, mut verdict: impl FnMut(&Key) -> Verdict) -> Option<Key> {
        let mut b = bin_of(size);
        let mut pos = self
            .bins
            .get(b)
            .map_or(0, |v| v.partition_point(|k| k.size < size));
        loop {
            match self.bins.get(b).and_then(|v| v.get(pos)) {
                Some(k) => match verdict(k) {
                    Verdict::Take => return self.remove_at(b, pos),
                    Verdict::Skip => pos += 1,
                    Verdict::Stop => return None,
                },
                None => {
                    b = self.next_nonempty(b + 1)?;
                    pos = 0;
                }
            }
        }
    }

    /// The first non-empty bin at or after `b`.
    #[inline]
    fn next_nonempty(&self, b: usize) -> Option<usize> {
        let w = b / 64;
        let bits = *self.nonempty.get(w)? & (!0u64 << (b % 64));
        if bits != 0 {
            return Some(w * 64 + bits.trailing_zeros() as usize);
        }
        let later = self.summary & (!0u64).checked_shl(w as u32 + 1).unwrap_or(0);
        if later == 0 {
            return None;
        }
        let w = later.trailing_zeros() as usize;
        let bits = *self.nonempty.get(w)?;
        Some(w * 64 + bits.trailing_zeros() as usize)
    }

    fn contains(&self, key: &Key) -> bool {
        self.bins
            .get(bin_of(key.size))
            .is_some_and(|v| v.binary_search(key).is_ok())
    }
}

/// What a search does with a candidate key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Use it.
    Take,
    /// Look at the next one.
    Skip,
    /// No later key can be used either.
    Stop,
}

/// Keys ≥ a size in (size, address) order.
pub(crate) struct AtLeast<'a> {
    bins: Option<&'a Bins>,
    bin: usize,
    pos: usize,
}

impl<'a> Iterator for AtLeast<'a> {
    type Item = &'a Key;

    #[inline]
    fn next(&mut self) -> Option<&'a Key> {
        let bins = self.bins?;
        loop {
            if let Some(k) = bins.bins.get(self.bin).and_then(|v| v.get(self.pos)) {
                self.pos += 1;
                return Some(k);
            }
            self.bin = bins.next_nonempty(self.bin + 1)?;
            self.pos = 0;
        }
    }
}

/// The free blocks of every (stream, pool).
#[derive(Default)]
pub(crate) struct FreeIndex {
    /// One set per (stream slot, pool), at [`set_index`].
    sets: Vec<Bins>,
}

/// The position of (stream, pool)'s set in [`FreeIndex::sets`].
#[inline]
fn set_index(stream: Slot, pool: Pool) -> usize {
    stream as usize * 2 + pool.index()
}

impl FreeIndex {
    /// Makes room for stream slot `stream`.
    pub(crate) fn ensure_stream(&mut self, stream: Slot) {
        let need = set_index(stream, Pool::Large) + 1;
        while self.sets.len() < need {
            self.sets.push(Bins::new());
        }
    }

    #[inline]
    pub(crate) fn insert(&mut self, stream: Slot, pool: Pool, key: Key) {
        if let Some(s) = self.sets.get_mut(set_index(stream, pool)) {
            s.insert(key);
        }
    }

    #[inline]
    pub(crate) fn remove(&mut self, stream: Slot, pool: Pool, key: Key) -> bool {
        self.sets
            .get_mut(set_index(stream, pool))
            .is_some_and(|s| s.remove(key))
    }

    /// Removes and returns the best fit of at least `size` bytes in (stream,
    /// pool) that `verdict` accepts.
    #[inline]
    pub(crate) fn take_first(
        &mut self,
        stream: Slot,
        pool: Pool,
        size: usize,
        verdict: impl FnMut(&Key) -> Verdict,
    ) -> Option<Key> {
        self.sets
            .get_mut(set_index(stream, pool))?
            .take_first(size, verdict)
    }

    /// The free blocks of (stream, pool) of at least `size` bytes, smallest
    /// first (lowest address among equals).
    #[inline]
    pub(crate) fn at_least(&self, stream: Slot, pool: Pool, size: usize) -> AtLeast<'_> {
        let Some(bins) = self.sets.get(set_index(stream, pool)) else {
            return AtLeast {
                bins: None,
                bin: 0,
                pos: 0,
            };
        };
        let b = bin_of(size);
        let pos = bins
            .bins
            .get(b)
            .map_or(0, |v| v.partition_point(|k| k.size < size));
        AtLeast {
            bins: Some(bins),
            bin: b,
            pos,
        }
    }

    pub(crate) fn is_empty(&self, stream: Slot, pool: Pool) -> bool {
        self.sets
            .get(set_index(stream, pool))
            .is_none_or(|s| s.len == 0)
    }

    /// The largest free block of any stream and pool.
    pub(crate) fn largest(&self) -> usize {
        self.all().map(|(_, _, k)| k.size).max().unwrap_or(0)
    }

    pub(crate) fn len(&self) -> usize {
        self.sets.iter().map(|s| s.len).sum()
    }

    pub(crate) fn contains(&self, stream: Slot, pool: Pool, key: &Key) -> bool {
        self.sets
            .get(set_index(stream, pool))
            .is_some_and(|s| s.contains(key))
    }

    /// Every key with its (stream, pool).
    pub(crate) fn all(&self) -> impl Iterator<Item = (Slot, Pool, Key)> + '_ {
        // only non-empty sets, and in them only the bins the bitmap marks
        // (a set has over 2,000 bins, nearly all empty)
        self.sets
            .iter()
            .enumerate()
            .filter(|(_, s)| s.len > 0)
            .flat_map(|(i, s)| {
                let pool = if i % 2 == 0 { Pool::Small } else { Pool::Large };
                let first = s.next_nonempty(0);
                AtLeast {
                    bins: first.map(|_| s),
                    bin: first.unwrap_or(0),
                    pos: 0,
                }
                .map(move |k| ((i / 2) as Slot, pool, *k))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(size: usize, ptr: usize, id: BlockId) -> Key {
        Key { size, ptr, id }
    }

    #[test]
    fn bins_are_ordered_by_size() {
        let mut last = 0;
        for size in (512..(64 << 20)).step_by(512 * 7) {
            let b = bin_of(size);
            assert!(b >= last, "bin of {size} is {b}, below {last}");
            last = b;
        }
        assert_eq!(bin_of(usize::MAX & !511), BINS - 1);
    }

    #[test]
    fn best_fit_is_smallest_then_lowest_address() {
        let mut ix = FreeIndex::default();
        ix.ensure_stream(0);
        for (i, &(size, addr)) in [(4096, 9), (2048, 5), (4096, 3), (3 << 20, 1), (5 << 20, 2)]
            .iter()
            .enumerate()
        {
            ix.insert(
                0,
                Pool::Large,
                Key {
                    size,
                    ptr: addr,
                    id: i as u32,
                },
            );
        }
        let got: Vec<_> = ix
            .at_least(0, Pool::Large, 3000)
            .map(|k| (k.size, k.ptr))
            .collect();
        assert_eq!(got, [(4096, 3), (4096, 9), (3 << 20, 1), (5 << 20, 2)]);
        assert_eq!(
            ix.at_least(0, Pool::Large, 4 << 20).next().map(|k| k.size),
            Some(5 << 20)
        );
        assert!(ix.remove(0, Pool::Large, key(4096, 3, 2)));
        assert!(!ix.remove(0, Pool::Large, key(4096, 3, 2)));
        assert_eq!(ix.len(), 4);
        assert_eq!(ix.largest(), 5 << 20);
        assert!(ix.at_least(0, Pool::Large, 6 << 20).next().is_none());
    }

    /// `all` yields exactly the keys held (a model set, after every step of a
    /// pseudo-random run of inserts and removes over 3 streams).
    #[test]
    fn all_is_exactly_the_keys_held() {
        let mut ix = FreeIndex::default();
        let mut model = std::collections::BTreeSet::new();
        for s in 0..3 {
            ix.ensure_stream(s);
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..4000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let stream = (x % 3) as Slot;
            let pool = if x & 8 == 0 { Pool::Small } else { Pool::Large };
            let size = match pool {
                Pool::Small => ((x >> 8) as usize % 2048 + 1) * 512,
                Pool::Large => ((x >> 8) as usize % 4096 + 1) << 20,
            };
            let key = key(size, (x >> 20) as usize % 64, step % 97);
            if x & 16 == 0 || model.is_empty() {
                ix.insert(stream, pool, key);
                model.insert((stream, pool.index(), key));
            } else {
                let &(s, p, k) = model.iter().nth((x >> 32) as usize % model.len()).unwrap();
                let pool = if p == 0 { Pool::Small } else { Pool::Large };
                assert!(ix.remove(s, pool, k));
                model.remove(&(s, p, k));
            }
            let mut got: Vec<_> = ix.all().map(|(s, p, k)| (s, p.index(), k)).collect();
            got.sort_unstable();
            let want: Vec<_> = model.iter().copied().collect();
            assert_eq!(got, want, "step {step}");
        }
    }
}
