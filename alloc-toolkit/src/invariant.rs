//! The invariants of the toolkit's stateful parts (the buffer pool and the
//! monitor's thresholds), one variant each: the variant's doc comment is the
//! definition, and every comment that relies on one links to it or cites its
//! displayed id (`toolkit:P1`). The property test of `pool.rs` checks
//! [`ToolkitInvariant::P1`] and [`ToolkitInvariant::P2`]; the threshold tests
//! check [`ToolkitInvariant::H1`] and [`ToolkitInvariant::H2`]
//! (`monitor.rs`: `device_thresholds_cross_and_recover_with_hysteresis`).

use core::fmt;

/// An invariant of the toolkit. Displayed as its id with the crate prefix,
/// `toolkit:P1`, unique across the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolkitInvariant {
    /// Pool classes serve their size: every vector in class `c` of a
    /// [`BufferPool`](crate::pool::BufferPool) has capacity ≥ 2^c elements, so
    /// any of them serves a request of at most 2^c elements. Kept in `pool.rs`.
    P1,
    /// Pooled bytes are counted and capped: `pooled_bytes` = Σ capacity ×
    /// `size_of::<T>()` of the pooled vectors ≤ `max_pooled_bytes`.
    P2,
    /// A threshold alternates (hysteresis): cross, recover, cross, … (never two
    /// crossings without a recovery in between). Kept in `threshold.rs`.
    H1,
    /// The recovery level is at most the crossing level, so a value that crossed
    /// cannot be "recovered" while still above the crossing level.
    H2,
}

impl ToolkitInvariant {
    /// Every invariant of this crate, in the order of their definitions.
    pub const ALL: &'static [Self] = &[Self::P1, Self::P2, Self::H1, Self::H2];

    /// The id with the crate prefix, unique across the workspace: `toolkit:P1`.
    pub const fn id(self) -> &'static str {
        match self {
            Self::P1 => "toolkit:P1",
            Self::P2 => "toolkit:P2",
            Self::H1 => "toolkit:H1",
            Self::H2 => "toolkit:H2",
        }
    }

    /// The equation's short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::P1 => "pool classes serve their size",
            Self::P2 => "pooled bytes are counted and capped",
            Self::H1 => "a threshold alternates",
            Self::H2 => "recovery is at most the crossing",
        }
    }
}

impl fmt::Display for ToolkitInvariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::ToolkitInvariant;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for inv in ToolkitInvariant::ALL {
            let id = inv.to_string();
            assert!(id.starts_with("toolkit:"), "{id} lacks the crate prefix");
            assert_eq!(id, format!("toolkit:{inv:?}"), "{id} is not its variant");
            assert!(!inv.name().is_empty());
            assert!(seen.insert(id.clone()), "{id} twice");
        }
    }
}
