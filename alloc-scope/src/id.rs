//! `ScopeId`: a scope's slot in the registry plus the generation of that slot.

use serde::Serialize;

/// Names one scope for as long as it exists: the registry slot in the low 32 bits,
/// the slot's generation in the high 32 bits. A retired slot gets a new generation
/// when it is reused, so an old id never names the new scope.
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
    pub const UNTRACKED: ScopeId = ScopeId(u64::MAX);

    pub(crate) const fn new(slot: u32, generation: u32) -> Self {
        ScopeId(((generation as u64) << 32) | slot as u64)
    }

    /// The registry slot.
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }

    /// The slot's generation when this scope was created.
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
    /// ([`COMPACT_SAMPLED`]) is reserved for a "sampled" flag that a heap
    /// profiler may set on a stored owner. A stored value with that bit set
    /// never equals a thread's fast-path word, so its free takes the
    /// out-of-line path, where the flag is to be handled.
    pub const fn to_compact(self) -> u32 {
        if !self.is_tracked() {
            return 0;
        }
        let slot = self.slot() & COMPACT_SLOT_MASK;
        let generation = self.generation() & COMPACT_GEN_MASK;
        1 + (slot | (generation << COMPACT_SLOT_BITS))
    }

    /// False for [`ScopeId::UNTRACKED`].
    pub const fn is_tracked(self) -> bool {
        self.0 != u64::MAX
    }
}

/// Bits of the slot in a compact id (the registry has 2^14 slots).
pub(crate) const COMPACT_SLOT_BITS: u32 = 14;
pub(crate) const COMPACT_SLOT_MASK: u32 = (1 << COMPACT_SLOT_BITS) - 1;
/// Low bits of the generation kept in a compact id (16: a block whose owner
/// closed and whose slot was then reused 65,536 times is charged to that
/// slot's scope of the same low bits; until then to `retired`).
pub(crate) const COMPACT_GEN_MASK: u32 = (1 << 16) - 1;
/// The bit of a stored compact owner id reserved for a "sampled" flag (see
/// [`ScopeId::to_compact`]); never set by this crate. In the 8-byte header
/// word ([`ScopeId::to_bits`]) the same flag goes in bit 31 (the top bit of
/// the slot half: slots are below 2^14, so it is 0 in every `ScopeId` but
/// [`ScopeId::UNTRACKED`], which is recognised before any flag is read).
pub const COMPACT_SAMPLED: u32 = 1 << 31;

// The largest compact id is `1 + (2^30 - 1)`: bit 31 stays free.
const _: () = assert!(COMPACT_SLOT_BITS + COMPACT_GEN_MASK.count_ones() <= 30);

const _: () = assert!(super::registry::CAPACITY <= 1 << COMPACT_SLOT_BITS);
