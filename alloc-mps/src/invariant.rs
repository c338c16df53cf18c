//! The invariants of the Metal backend, one variant each: the variant's doc
//! comment is the definition, and every comment that relies on one links to it
//! or cites its displayed id (`mps:A1`). Both are kept by the Apple layer
//! (`sys/apple.rs`); the backend's `DeviceBackend` contract rests on them.

alloc_scope::invariants! {
    /// An invariant of the Metal backend. Displayed as its id with the crate
    /// prefix, `mps:A1`, unique across the workspace.
    pub enum MpsInvariant in "mps" {
        /// Segments never overlap: every live segment is one `MTLBuffer` in
        /// `segments`, keyed by its address; addresses come from a counter that only
        /// grows, in steps of the segment's length rounded up to `ADDRESS_GRANULE`
        /// (16 KiB), so two segments never overlap and no address is reused.
        A1 => "segments never overlap",
        /// Queue values commit in order: a queue's `last` is the highest value
        /// encoded into a committed command buffer of that queue; values are taken
        /// and committed under the queue's lock, so they reach the queue in
        /// increasing order.
        A2 => "queue values commit in order",
    }
}
