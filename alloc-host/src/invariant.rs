//! The invariants of the tracking host allocator, one variant each: the
//! variant's doc comment is the definition, and every comment that relies on one
//! links to it or cites its displayed id (`host:K1`). The placement check run
//! once per process (`classes.rs`, `decide`) checks [`HostInvariant::K1`] on the
//! linked mimalloc; the tests of `classes.rs`, `header.rs` and `owner.rs` check
//! the others.

alloc_scope::invariants! {
    /// An invariant of the tracking host allocator. Displayed as its id with the
    /// crate prefix, `host:K1`, unique across the workspace.
    pub enum HostInvariant in "host" {
        /// Size classes are mimalloc's: for every size `s` up to `MEDIUM_MAX`
        /// (64 KiB), `class(s)` is the block size mimalloc's `mi_good_size(s)` reports
        /// (tested for every size), and every block `mi_malloc(s)` returns has at least
        /// `class(s)` usable bytes. Kept in `classes.rs`.
        K1 => "classes are mimalloc's",
        /// Above `MEDIUM_MAX`, `class(s)` rounds up to 4 KiB (mimalloc's OS page),
        /// and blocks are at least `HUGE_GRANULE` (64 KiB) apart.
        K2 => "huge blocks are page-rounded",
        /// The placement is decided once per process, before the first block is
        /// placed (`classes::mode`): with classes only when [`HostInvariant::K1`]
        /// holds for the linked mimalloc (a build with padding, guard pages or
        /// another major version gets the 8-byte header instead), so it never
        /// changes while blocks are live.
        K3 => "placement decided once",
        /// Header alignment: `user = base + h`, `user % align == 0`,
        /// `base % max(8, align) == 0`. Kept in `header.rs`.
        H1 => "header alignment",
        /// The owner word: the 8 bytes at `user - 8` hold the owner's `ScopeId` bits
        /// from allocation until free; realloc copies them along with the block.
        H2 => "owner word in the header",
        /// A block placed by class carries its owner's compact id from allocation
        /// until free: in its slack if `class(size) - size >= 4`, else in its
        /// class's table entry (index `(address mod 256 MiB) >> shift`,
        /// `1 << shift ≤ class size`); 0 means untracked. A table entry is 0
        /// unless a tracked live block (or a sampled untracked one, whose entry
        /// holds only the sampled flag) holds it: a free, and a realloc that
        /// moves or regrows the block, zero it before the block goes back to
        /// the inner allocator; so a block allocated while tracking is off
        /// writes 0 in its slack and nothing in the table, and still reads as
        /// untracked. Kept in `owner.rs`; tested by `host_off_reuse`.
        O1 => "owner kept by class",
        /// The placement is a function of the size alone (and the process-wide
        /// mode), so allocation, reallocation and free agree on it.
        O2 => "placement by size alone",
        /// Untouched: while the gate's untouched bit is set (an allocator
        /// built with `starting_off`, tracking never switched on, no block
        /// sampled yet), every owner kept by class is 0, so a free or realloc
        /// by class skips reading it (and the table entry stays 0, keeping
        /// [`HostInvariant::O1`]). The bit is set only when the placement is
        /// decided, and cleared for good by `set_tracking(true)` (in the same
        /// atomic step that clears the off bit) and before any sampled
        /// block's mark is stored. Kept in `classes.rs` (`touch`) and
        /// `tracking.rs`; tested by `host_start_off` and
        /// `host_start_off_sampled`.
        O3 => "untouched: every owner is 0",
        /// A sampled block carries the sampled flag in its stored owner
        /// (`alloc_scope::COMPACT_SAMPLED`, bit 31 of a compact id;
        /// `alloc_scope::WORD_SAMPLED`, bit 63 of a header word) exactly while
        /// the profile's live table holds its address. No id uses that bit, so
        /// a flagged owner never equals a thread's fast word: its free or
        /// realloc leaves the fast path, takes the sample out of the live
        /// table before the address can be reused, and charges the owner (the
        /// flag stripped) exactly once. Kept in `tracking.rs` and
        /// `profile/mod.rs`; tested by `host_profile_free` and the sampled host
        /// models (`host_model_sampled`, `host_model_mimalloc_sampled`).
        S1 => "sampled flag matches the live table",
    }
}
