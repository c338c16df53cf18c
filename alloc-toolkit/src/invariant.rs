//! The invariants of the toolkit's stateful parts (the buffer pool and the
//! monitor's thresholds), one variant each: the variant's doc comment is the
//! definition, and every comment that relies on one links to it or cites its
//! displayed id (`toolkit:P1`). The property test of `pool.rs` checks
//! [`ToolkitInvariant::P1`] and [`ToolkitInvariant::P2`]; the threshold tests
//! check [`ToolkitInvariant::H1`] and [`ToolkitInvariant::H2`]
//! (`monitor.rs`: `device_thresholds_cross_and_recover_with_hysteresis`).

alloc_scope::invariants! {
    /// An invariant of the toolkit. Displayed as its id with the crate prefix,
    /// `toolkit:P1`, unique across the workspace.
    pub enum ToolkitInvariant in "toolkit" {
        /// Pool classes serve their size: every vector in class `c` of a
        /// [`BufferPool`](crate::pool::BufferPool) has capacity ≥ 2^c elements, so
        /// any of them serves a request of at most 2^c elements. Kept in `pool.rs`.
        P1 => "pool classes serve their size",
        /// Pooled bytes are counted and capped: `pooled_bytes` = Σ capacity ×
        /// `size_of::<T>()` of the pooled vectors ≤ `max_pooled_bytes`.
        P2 => "pooled bytes are counted and capped",
        /// A threshold alternates (hysteresis): cross, recover, cross, … (never two
        /// crossings without a recovery in between). Kept in `threshold.rs`.
        H1 => "a threshold alternates",
        /// The recovery level is at most the crossing level, so a value that crossed
        /// cannot be "recovered" while still above the crossing level.
        H2 => "recovery is at most the crossing",
    }
}
