//! The invariants of the tracking host allocator, one variant each: the
//! variant's doc comment is the definition, and every comment that relies on one
//! links to it or cites its displayed id (`host:K1`). The placement check run
//! once per process (`classes.rs`, `decide`) checks [`HostInvariant::K1`] on the
//! linked mimalloc; the tests of `classes.rs`, `header.rs` and `owner.rs` check
//! the others.

use core::fmt;

/// An invariant of the tracking host allocator. Displayed as its id with the
/// crate prefix, `host:K1`, unique across the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostInvariant {
    /// Size classes are mimalloc's: for every size `s` up to `MEDIUM_MAX`
    /// (64 KiB), `class(s)` is the block size mimalloc's `mi_good_size(s)` reports
    /// (tested for every size), and every block `mi_malloc(s)` returns has at least
    /// `class(s)` usable bytes. Kept in `classes.rs`.
    K1,
    /// Above `MEDIUM_MAX`, `class(s)` rounds up to 4 KiB (mimalloc's OS page),
    /// and blocks are at least `HUGE_GRANULE` (64 KiB) apart.
    K2,
    /// The placement is decided once per process, before the first block is
    /// placed (`classes::mode`): with classes only when [`HostInvariant::K1`]
    /// holds for the linked mimalloc (a build with padding, guard pages or
    /// another major version gets the 8-byte header instead), so it never
    /// changes while blocks are live.
    K3,
    /// Header alignment: `user = base + h`, `user % align == 0`,
    /// `base % max(8, align) == 0`. Kept in `header.rs`.
    H1,
    /// The owner word: the 8 bytes at `user - 8` hold the owner's `ScopeId` bits
    /// from allocation until free; realloc copies them along with the block.
    H2,
    /// A block placed by class carries its owner's compact id from allocation
    /// until free: in its slack if `class(size) - size >= 4`, else in its
    /// class's table entry; 0 means untracked. Kept in `owner.rs`.
    O1,
    /// The placement is a function of the size alone (and the process-wide
    /// mode), so allocation, reallocation and free agree on it.
    O2,
}

impl HostInvariant {
    /// Every invariant of this crate, in the order of their definitions.
    pub const ALL: &'static [Self] = &[
        Self::K1,
        Self::K2,
        Self::K3,
        Self::H1,
        Self::H2,
        Self::O1,
        Self::O2,
    ];

    /// The id with the crate prefix, unique across the workspace: `host:K1`.
    pub const fn id(self) -> &'static str {
        match self {
            Self::K1 => "host:K1",
            Self::K2 => "host:K2",
            Self::K3 => "host:K3",
            Self::H1 => "host:H1",
            Self::H2 => "host:H2",
            Self::O1 => "host:O1",
            Self::O2 => "host:O2",
        }
    }

    /// The equation's short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::K1 => "classes are mimalloc's",
            Self::K2 => "huge blocks are page-rounded",
            Self::K3 => "placement decided once",
            Self::H1 => "header alignment",
            Self::H2 => "owner word in the header",
            Self::O1 => "owner kept by class",
            Self::O2 => "placement by size alone",
        }
    }
}

impl fmt::Display for HostInvariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::HostInvariant;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for inv in HostInvariant::ALL {
            let id = inv.to_string();
            assert!(id.starts_with("host:"), "{id} lacks the crate prefix");
            assert_eq!(id, format!("host:{inv:?}"), "{id} is not its variant");
            assert!(!inv.name().is_empty());
            assert!(seen.insert(id.clone()), "{id} twice");
        }
    }
}
