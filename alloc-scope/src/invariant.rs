//! The invariants of the scope registry, one variant each: the variant's doc
//! comment is the definition, and every comment that relies on one links to it
//! or cites its displayed id (`scope:C1`). [`crate::validate()`] checks the
//! counter invariants C1–C4 and reports the variant that fails.

use core::fmt;

/// An invariant of the scope registry. Displayed as its id with the crate
/// prefix, `scope:C1`, unique across the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeInvariant {
    /// Live bytes balance, at quiescence (every thread has flushed), for every
    /// scope: `live_bytes = bytes_allocated - bytes_freed`. Defined on the
    /// counters in `counters.rs`; checked by [`crate::validate()`].
    C1,
    /// Live allocations balance, at quiescence, for every scope:
    /// `live_allocations = allocations - frees`. Checked by
    /// [`crate::validate()`].
    C2,
    /// Peak covers live, at quiescence, for every scope, host and device:
    /// `peak_bytes >= live_bytes`. Checked by [`crate::validate()`].
    C3,
    /// A parent includes its children, at quiescence: a parent's counters =
    /// its own charges + Σ its children's counters (every charge is applied to
    /// the whole chain), so a parent's peak is the peak of that sum, not the
    /// sum of the children's peaks. Checked by [`crate::validate()`] as
    /// Σ children's allocations, bytes allocated and live bytes ≤ the
    /// parent's.
    C4,
    /// The life word: `life = refs·2³² + owned_live`, where `refs` counts
    /// handles, guards and live children, and `owned_live` the live
    /// allocations (host and device) whose owner is this scope. The operation
    /// that brings `life` to 0 retires the slot, exactly once (a single atomic
    /// add observes the zero). Kept in `record.rs`.
    R1,
    /// A record's parent outlives it: a child holds one ref on its parent
    /// until it retires.
    R2,
    /// The all-zero bit pattern is a valid free record, so the registry lives
    /// in `.bss` and works before `main`.
    R3,
    /// Recycling a closed slot: a slot is recycled while it still owns memory
    /// only from the CLOSED state (no handle, guard or child holds it): the
    /// recycler claims it (CLOSED → EVICTING), bumps its generation, waits
    /// until `pins` is 0, then moves its remaining live figures to `retired`.
    /// A charge to an owner pins the slot, then compares the generation: a
    /// stale id is charged to `retired`, so no charge ever lands on a recycled
    /// slot.
    R4,
    /// Slot exclusivity: a slot is on the free list, or handed out by bumping,
    /// at most once at a time (tagged Treiber stack: each successful pop or
    /// push bumps the tag, so an ABA interleaving fails its
    /// compare-and-swap). Kept in `registry.rs`.
    G1,
    /// Fixed slots: slots 0 (the process), 1 (unattributed) and 2 (retired)
    /// are never retired, never on the free list; the parent of slots 1 and
    /// 2 is 0.
    G2,
    /// Bounded walks: every walk up a chain stops at the root; it is bounded
    /// by [`MAX_DEPTH`](crate::MAX_DEPTH) as well, so a corrupted link cannot
    /// loop.
    G3,
    /// Hard budgets: for a scope with a hard limit `L`, `live_bytes ≤ L` at
    /// every moment (a reservation is a compare-and-swap that checks the
    /// limit), so no other thread ever sees a refused request's bytes there,
    /// and `peak_bytes ≤ L`.
    G4,
}

impl ScopeInvariant {
    /// Every invariant of this crate, in the order of their definitions.
    pub const ALL: &'static [Self] = &[
        Self::C1,
        Self::C2,
        Self::C3,
        Self::C4,
        Self::R1,
        Self::R2,
        Self::R3,
        Self::R4,
        Self::G1,
        Self::G2,
        Self::G3,
        Self::G4,
    ];

    /// The id with the crate prefix, unique across the workspace: `scope:C1`.
    pub const fn id(self) -> &'static str {
        match self {
            Self::C1 => "scope:C1",
            Self::C2 => "scope:C2",
            Self::C3 => "scope:C3",
            Self::C4 => "scope:C4",
            Self::R1 => "scope:R1",
            Self::R2 => "scope:R2",
            Self::R3 => "scope:R3",
            Self::R4 => "scope:R4",
            Self::G1 => "scope:G1",
            Self::G2 => "scope:G2",
            Self::G3 => "scope:G3",
            Self::G4 => "scope:G4",
        }
    }

    /// The equation's short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::C1 => "live bytes balance",
            Self::C2 => "live allocations balance",
            Self::C3 => "peak covers live",
            Self::C4 => "a parent includes its children",
            Self::R1 => "life word",
            Self::R2 => "parent outlives child",
            Self::R3 => "zero is a free record",
            Self::R4 => "recycling a closed slot",
            Self::G1 => "slot exclusivity",
            Self::G2 => "fixed slots",
            Self::G3 => "bounded walks",
            Self::G4 => "hard budgets",
        }
    }
}

impl fmt::Display for ScopeInvariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::ScopeInvariant;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for inv in ScopeInvariant::ALL {
            let id = inv.to_string();
            assert!(id.starts_with("scope:"), "{id} lacks the crate prefix");
            assert_eq!(id, format!("scope:{inv:?}"), "{id} is not its variant");
            assert!(!inv.name().is_empty());
            assert!(seen.insert(id.clone()), "{id} twice");
        }
    }
}
