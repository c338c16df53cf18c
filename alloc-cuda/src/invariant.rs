//! The invariants of the CUDA backend, one variant each: the variant's doc
//! comment is the definition, and every comment that relies on one links to it
//! or cites its displayed id (`cuda:E1`). The unit tests of `stream.rs` check
//! [`CudaInvariant::H1`] and [`CudaInvariant::K1`]; the stub-driver tests
//! exercise the others (the driver refuses an event or page that breaks them).

use core::fmt;

/// An invariant of the CUDA backend. Displayed as its id with the crate
/// prefix, `cuda:E1`, unique across the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CudaInvariant {
    /// Free events are the pool's alone: every event in the free list of an
    /// event pool is owned by the pool alone (no
    /// [`PooledEvent`](crate::event::PooledEvent) names it), so it may be
    /// recorded again. Kept in `event.rs`.
    E1,
    /// A [`PooledEvent`](crate::event::PooledEvent) keeps its pool (and so the
    /// context) alive.
    E2,
    /// Per-thread keys are tagged: a per-thread key has the top bit set and an
    /// even value, so it is never a real stream (a pointer below 2^63), the
    /// legacy stream (0) or [`StreamHandle::HOST`](crate::stream::StreamHandle::HOST)
    /// (odd). Kept in `stream.rs`.
    H1,
    /// Thread indices are never reused: a per-thread key names one thread.
    H2,
    /// Known streams fill in order: the slots of
    /// [`KnownStreams`](crate::stream::KnownStreams) are filled in order and
    /// never emptied; `0` marks an empty slot, so the legacy stream (key 0) is
    /// stored as `usize::MAX - 1`.
    K1,
    /// The page table is the mapped pages: `pages` holds exactly the mapped
    /// pages, page address → its physical allocation handle. Kept in `vm.rs`.
    V1,
    /// Every handle in `pages` is mapped at its key and nowhere else.
    V2,
}

impl CudaInvariant {
    /// Every invariant of this crate, in the order of their definitions.
    pub const ALL: &'static [Self] = &[
        Self::E1,
        Self::E2,
        Self::H1,
        Self::H2,
        Self::K1,
        Self::V1,
        Self::V2,
    ];

    /// The id with the crate prefix, unique across the workspace: `cuda:E1`.
    pub const fn id(self) -> &'static str {
        match self {
            Self::E1 => "cuda:E1",
            Self::E2 => "cuda:E2",
            Self::H1 => "cuda:H1",
            Self::H2 => "cuda:H2",
            Self::K1 => "cuda:K1",
            Self::V1 => "cuda:V1",
            Self::V2 => "cuda:V2",
        }
    }

    /// The equation's short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::E1 => "free events are the pool's",
            Self::E2 => "an event keeps its pool",
            Self::H1 => "per-thread keys are tagged",
            Self::H2 => "thread indices are never reused",
            Self::K1 => "known streams fill in order",
            Self::V1 => "pages are the mapped pages",
            Self::V2 => "a handle is mapped once",
        }
    }
}

impl fmt::Display for CudaInvariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::CudaInvariant;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for inv in CudaInvariant::ALL {
            let id = inv.to_string();
            assert!(id.starts_with("cuda:"), "{id} lacks the crate prefix");
            assert_eq!(id, format!("cuda:{inv:?}"), "{id} is not its variant");
            assert!(!inv.name().is_empty());
            assert!(seen.insert(id.clone()), "{id} twice");
        }
    }
}
