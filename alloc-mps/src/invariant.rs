//! The invariants of the Metal backend, one variant each: the variant's doc
//! comment is the definition, and every comment that relies on one links to it
//! or cites its displayed id (`mps:A1`). Both are kept by the Apple layer
//! (`sys/apple.rs`); the backend's `DeviceBackend` contract rests on them.

use core::fmt;

/// An invariant of the Metal backend. Displayed as its id with the crate
/// prefix, `mps:A1`, unique across the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MpsInvariant {
    /// Segments never overlap: every live segment is one `MTLBuffer` in
    /// `segments`, keyed by its address; addresses come from a counter that only
    /// grows, in steps of the segment's length rounded up to `ADDRESS_GRANULE`
    /// (16 KiB), so two segments never overlap and no address is reused.
    A1,
    /// Queue values commit in order: a queue's `last` is the highest value
    /// encoded into a committed command buffer of that queue; values are taken
    /// and committed under the queue's lock, so they reach the queue in
    /// increasing order.
    A2,
}

impl MpsInvariant {
    /// Every invariant of this crate, in the order of their definitions.
    pub const ALL: &'static [Self] = &[Self::A1, Self::A2];

    /// The id with the crate prefix, unique across the workspace: `mps:A1`.
    pub const fn id(self) -> &'static str {
        match self {
            Self::A1 => "mps:A1",
            Self::A2 => "mps:A2",
        }
    }

    /// The equation's short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::A1 => "segments never overlap",
            Self::A2 => "queue values commit in order",
        }
    }
}

impl fmt::Display for MpsInvariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::MpsInvariant;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for inv in MpsInvariant::ALL {
            let id = inv.to_string();
            assert!(id.starts_with("mps:"), "{id} lacks the crate prefix");
            assert_eq!(id, format!("mps:{inv:?}"), "{id} is not its variant");
            assert!(!inv.name().is_empty());
            assert!(seen.insert(id.clone()), "{id} twice");
        }
    }
}
