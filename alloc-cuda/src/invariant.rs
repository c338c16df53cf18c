//! The invariants of the CUDA backend, one variant each: the variant's doc
//! comment is the definition, and every comment that relies on one links to it
//! or cites its displayed id (`cuda:E1`). The unit tests of `stream.rs` check
//! [`CudaInvariant::H1`] and [`CudaInvariant::K1`]; the stub-driver tests
//! exercise the others (the driver refuses an event or page that breaks them).

alloc_scope::invariants! {
    /// An invariant of the CUDA backend. Displayed as its id with the crate
    /// prefix, `cuda:E1`, unique across the workspace.
    pub enum CudaInvariant in "cuda" {
        /// Free events are the pool's alone: every event in the free list of an
        /// event pool is owned by the pool alone (no
        /// [`PooledEvent`](crate::event::PooledEvent) names it), so it may be
        /// recorded again. Kept in `event.rs`.
        E1 => "free events are the pool's",
        /// A [`PooledEvent`](crate::event::PooledEvent) keeps its pool (and so the
        /// context) alive.
        E2 => "an event keeps its pool",
        /// Per-thread keys are tagged: a per-thread key has the top bit set and an
        /// even value, so it is never a real stream (a pointer below 2^63), the
        /// legacy stream (0) or [`StreamHandle::HOST`](crate::stream::StreamHandle::HOST)
        /// (odd). Kept in `stream.rs`.
        H1 => "per-thread keys are tagged",
        /// Thread indices are never reused: a per-thread key names one thread.
        H2 => "thread indices are never reused",
        /// Known streams fill in order: the slots of
        /// [`KnownStreams`](crate::stream::KnownStreams) are filled in order and
        /// never emptied; `0` marks an empty slot, so the legacy stream (key 0) is
        /// stored as `usize::MAX - 1`.
        K1 => "known streams fill in order",
        /// The page table is the mapped pages: `pages` holds exactly the mapped
        /// pages, page address → its physical allocation handle. Kept in `vm.rs`.
        V1 => "pages are the mapped pages",
        /// Every handle in `pages` is mapped at its key and nowhere else.
        V2 => "a handle is mapped once",
    }
}
