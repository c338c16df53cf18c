//! `ScopeId`: a scope's slot in the registry plus the generation of that slot.

use serde::Serialize;

/// Names one scope for as long as it exists: the registry slot in the low 32 bits,
/// the low 31 bits of the slot's generation above them; bit 63 is never set (the
/// host allocator keeps its "sampled" mark there, see [`WORD_SAMPLED`]). A
/// retired slot gets a new generation when it is reused, so an old id never
/// names the new scope.
///
/// The host allocator stores these 8 bytes in front of every block it hands out,
/// which is how a free finds the scope that made the allocation.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct ScopeId(u64);

impl ScopeId {
    /// The process: every tracked byte is charged here, whatever scope it is in.
    pub const ROOT: ScopeId = ScopeId::new(0, 0);
    /// Memory a thread allocates after its thread-local state was torn down (other
    /// thread-locals' destructors) is charged here, a child of the root.
    pub const UNATTRIBUTED: ScopeId = ScopeId::new(1, 0);
    /// Live memory of closed scopes whose registry slot was recycled (see the
    /// crate docs, "long-running processes"): a child of the root. Frees of such
    /// blocks are charged here.
    pub const RETIRED: ScopeId = ScopeId::new(2, 0);
    /// Memory allocated while tracking was off: charged nowhere, its free ignored.
    pub const UNTRACKED: ScopeId = ScopeId(u64::MAX >> 1);

    pub(crate) const fn new(slot: u32, generation: u32) -> Self {
        ScopeId((((generation & GEN_MASK) as u64) << 32) | slot as u64)
    }

    /// The registry slot.
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }

    /// The slot's generation when this scope was created (its low 31 bits).
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The 8-byte form stored in block headers.
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from [`ScopeId::to_bits`].
    pub const fn from_bits(bits: u64) -> Self {
        ScopeId(bits)
    }

    /// The 4-byte form the host allocator keeps with blocks that have no room
    /// for 8: `1 + (slot | low 16 bits of the generation << 14)`, 0 for
    /// [`ScopeId::UNTRACKED`]. `owner_from_compact` turns it back.
    ///
    /// The value is at most `2^30`, so bit 31 is always 0: it
    /// ([`COMPACT_SAMPLED`]) is the "sampled" flag the host allocator's heap
    /// profiler sets on a stored owner. A stored value with that bit set
    /// never equals a thread's fast-path word, so its free takes the
    /// out-of-line path, where the flag is handled.
    pub const fn to_compact(self) -> u32 {
        if !self.is_tracked() {
            return 0;
        }
        self.to_compact_tracked()
    }

    /// [`ScopeId::to_compact`] of an id known not to be
    /// [`ScopeId::UNTRACKED`] (one made from a registry slot).
    #[inline(always)]
    pub(crate) const fn to_compact_tracked(self) -> u32 {
        let slot = self.slot() & COMPACT_SLOT_MASK;
        let generation = self.generation() & COMPACT_GEN_MASK;
        1 + (slot | (generation << COMPACT_SLOT_BITS))
    }

    /// False for [`ScopeId::UNTRACKED`].
    pub const fn is_tracked(self) -> bool {
        self.0 != Self::UNTRACKED.0
    }
}

/// Bits of the slot in a compact id (the registry has 2^14 slots).
pub(crate) const COMPACT_SLOT_BITS: u32 = 14;
pub(crate) const COMPACT_SLOT_MASK: u32 = (1 << COMPACT_SLOT_BITS) - 1;
/// Low bits of the generation kept in a compact id (16: a block whose owner
/// closed and whose slot was then reused 65,536 times is charged to that
/// slot's scope of the same low bits; until then to `retired`). Compact ids
/// stay below 2^31, leaving bit 31 to [`COMPACT_SAMPLED`].
pub(crate) const COMPACT_GEN_MASK: u32 = (1 << 16) - 1;
/// Bits of the generation kept in an id (31: bit 63 of the id stays free for
/// [`WORD_SAMPLED`]).
pub(crate) const GEN_MASK: u32 = u32::MAX >> 1;

/// The "sampled" flag of a compact owner id ([`ScopeId::to_compact`]): the
/// host allocator's heap profiler sets it on the owner it stores for a
/// sampled block; never set by this crate. A stored owner with it never
/// equals a thread's fast-path word (compact ids are at most 2^30), so the
/// block's free leaves the fast path.
pub const COMPACT_SAMPLED: u32 = 1 << 31;
/// The "sampled" flag of an 8-byte owner word ([`ScopeId::to_bits`]): bit 63,
/// which no id uses (generations keep 31 bits, and
/// [`ScopeId::UNTRACKED`] is `u64::MAX >> 1`), so an untracked block can be
/// sampled too.
pub const WORD_SAMPLED: u64 = 1 << 63;

// The largest compact id is `1 + (2^30 - 1)`: bit 31 stays free.
const _: () = assert!(COMPACT_SLOT_BITS + COMPACT_GEN_MASK.count_ones() <= 30);
const _: () =
    assert!(1 + (COMPACT_SLOT_MASK | (COMPACT_GEN_MASK << COMPACT_SLOT_BITS)) < COMPACT_SAMPLED);
// No id, UNTRACKED included, has the word's flag.
const _: () = assert!(ScopeId::UNTRACKED.0 & WORD_SAMPLED == 0);
const _: () = assert!(ScopeId::new(u32::MAX, u32::MAX).0 & WORD_SAMPLED == 0);

const _: () = assert!(super::registry::CAPACITY <= 1 << COMPACT_SLOT_BITS);
