//! Blocks: free, in-use, pending or unmapped sub-ranges of a segment, kept in
//! a slab and linked in address order within their segment.
//!
//! # Invariants
//! Blocks keep [`CoreInvariant::S1`] (they tile their segment),
//! [`CoreInvariant::S2`] (free neighbours merge), [`CoreInvariant::S3`]
//! (unmapped blocks are whole pages) and [`CoreInvariant::A1`] (blocks are
//! aligned); their definitions are on the variants.

use crate::segment::{SegmentId, SegmentKind};
use crate::size_class::Pool;
use crate::streams::Slot;
#[cfg(doc)]
use crate::{CoreInvariant, LockRule};

/// Index of a block in the slab.
pub(crate) type BlockId = u32;
/// "No block" in a link.
pub(crate) const NIL: BlockId = u32::MAX;

/// What a block is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    /// Cached, in the free index, reusable by its stream.
    Free,
    /// Handed out to a user.
    InUse,
    /// Freed by its user, waiting for events on other streams that used it.
    Pending,
    /// Address space of an expandable segment with no memory mapped.
    Unmapped,
}

#[derive(Clone, Debug)]
pub(crate) struct Block {
    pub(crate) ptr: usize,
    pub(crate) size: usize,
    /// Bytes the user asked for (in-use and pending blocks).
    pub(crate) requested: usize,
    pub(crate) seg: SegmentId,
    pub(crate) prev: BlockId,
    pub(crate) next: BlockId,
    pub(crate) state: BlockState,
    /// Slot of the stream this block belongs to.
    pub(crate) stream: Slot,
    /// The segment's pool (copied here so the hot path reads one struct).
    pub(crate) pool: Pool,
    /// The segment's kind (copied likewise).
    pub(crate) seg_kind: SegmentKind,
    /// The scope (`ScopeId::to_bits`) current when the block was handed out
    /// while history was recorded, else [`NO_SCOPE`]: a snapshot names it
    /// in the block's frames for as long as the block lives.
    pub(crate) scope: u64,
    /// The engine's free clock when this memory last became free (the
    /// latest of its parts after a merge; 0 for memory never handed out):
    /// a device-wide sync started after the clock passed it covers the work
    /// that used it ([`LockRule::L1`]).
    pub(crate) freed_at: u64,
}

/// [`Block::scope`] of a block handed out while history was off.
pub(crate) const NO_SCOPE: u64 = u64::MAX;

impl Block {
    /// Whether the block shares its segment with other blocks.
    #[inline]
    pub(crate) fn is_split(&self) -> bool {
        self.prev != NIL || self.next != NIL
    }

    #[inline]
    pub(crate) fn end(&self) -> usize {
        self.ptr + self.size
    }
}

/// The slab every block lives in; ids stay valid until the block is removed.
#[derive(Default)]
pub(crate) struct BlockSlab {
    entries: Vec<Option<Block>>,
    vacant: Vec<BlockId>,
}

impl BlockSlab {
    /// Stores `b`, or `None` when the slab has `u32::MAX - 1` blocks.
    pub(crate) fn insert(&mut self, b: Block) -> Option<BlockId> {
        if let Some(id) = self.vacant.pop() {
            self.entries[id as usize] = Some(b);
            return Some(id);
        }
        let id = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != NIL)?;
        self.entries.push(Some(b));
        Some(id)
    }

    pub(crate) fn remove(&mut self, id: BlockId) -> Option<Block> {
        let b = self.entries.get_mut(id as usize)?.take()?;
        self.vacant.push(id);
        Some(b)
    }

    #[inline]
    pub(crate) fn get(&self, id: BlockId) -> Option<&Block> {
        self.entries.get(id as usize)?.as_ref()
    }

    /// The blocks of a segment in address order, from its first block `head`.
    pub(crate) fn chain(&self, head: BlockId) -> impl Iterator<Item = &Block> + '_ {
        std::iter::successors(self.get(head), move |b| self.get(b.next))
    }

    /// The block `id`, which the caller knows is live (an engine invariant).
    #[inline]
    pub(crate) fn at(&self, id: BlockId) -> &Block {
        match self.get(id) {
            Some(b) => b,
            None => unreachable_block(id),
        }
    }

    /// The block `id`, mutably, which the caller knows is live.
    #[inline]
    pub(crate) fn at_mut(&mut self, id: BlockId) -> &mut Block {
        match self.entries.get_mut(id as usize).and_then(Option::as_mut) {
            Some(b) => b,
            None => unreachable_block(id),
        }
    }

    /// Splits `id` at `first` bytes: `id` keeps the first part, a new block
    /// with `id`'s state and stream takes the rest. `None` (nothing changed)
    /// when the slab is full.
    pub(crate) fn split(&mut self, id: BlockId, first: usize) -> Option<BlockId> {
        let b = self.at(id);
        debug_assert!(
            first > 0 && first < b.size,
            "split of {} B block at {first}",
            b.size
        );
        let rest = Block {
            ptr: b.ptr + first,
            size: b.size - first,
            requested: 0,
            seg: b.seg,
            prev: id,
            next: b.next,
            state: b.state,
            stream: b.stream,
            pool: b.pool,
            seg_kind: b.seg_kind,
            scope: NO_SCOPE,
            freed_at: b.freed_at,
        };
        let old_next = b.next;
        let rid = self.insert(rest)?;
        if old_next != NIL {
            self.at_mut(old_next).prev = rid;
        }
        let b = self.at_mut(id);
        b.size = first;
        b.next = rid;
        Some(rid)
    }

    /// Absorbs `id`'s next block into `id` and removes it.
    pub(crate) fn absorb_next(&mut self, id: BlockId) {
        let next = self.at(id).next;
        let Some(n) = self.remove(next) else { return };
        if n.next != NIL {
            self.at_mut(n.next).prev = id;
        }
        let b = self.at_mut(id);
        b.size += n.size;
        b.next = n.next;
        b.freed_at = b.freed_at.max(n.freed_at);
    }
}

#[cold]
#[inline(never)]
fn unreachable_block(id: BlockId) -> ! {
    // An engine bug, never a user input: ids come only from the engine.
    panic!("block {id} is not live: the engine's block links are corrupt")
}
