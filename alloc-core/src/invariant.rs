//! The invariants of the engine (and of the replay traces it reads), one
//! variant each, and its locking rule ([`LockRule`]): the variant's doc comment
//! is the definition, and every comment that relies on one links to it or cites
//! its displayed id (`core:S1`). [`CachingAllocator::validate`] checks
//! [`CoreInvariant::S1`]–[`CoreInvariant::S4`], [`CoreInvariant::A1`],
//! [`CoreInvariant::F1`], [`CoreInvariant::T1`], [`CoreInvariant::T2`] and
//! [`CoreInvariant::P1`] and reports the variant that fails
//! ([`CoreInvariant::P2`] is a rule of the sync path, exercised by tests);
//! [`Trace::from_events`] checks [`CoreInvariant::R1`] and
//! [`CoreInvariant::R2`].
//!
//! [`CachingAllocator::validate`]: crate::CachingAllocator::validate
//! [`Trace::from_events`]: crate::replay::Trace::from_events

alloc_scope::invariants! {
    /// An invariant of the engine or of a replay trace. Displayed as its id with
    /// the crate prefix, `core:S1`, unique across the workspace.
    pub enum CoreInvariant in "core" {
        /// Blocks tile their segment: the first starts at the segment's base, each
        /// next block starts where its predecessor ends, `prev`/`next` links agree,
        /// and the sizes sum to the segment's size. Kept in `block.rs`.
        S1 => "blocks tile their segment",
        /// No two adjacent free blocks of one stream in one segment (they merge).
        S2 => "free neighbours merge",
        /// No two adjacent unmapped blocks; unmapped blocks start and end on page
        /// boundaries and occur only in expandable segments.
        S3 => "unmapped blocks are whole pages",
        /// A segment's `mapped` bytes equal the sizes of its blocks that are not
        /// unmapped; a fixed segment is fully mapped. Kept in `segment.rs`.
        S4 => "mapped bytes match the blocks",
        /// Every block starts at a multiple of
        /// [`MIN_BLOCK`](crate::size_class::MIN_BLOCK).
        A1 => "blocks are aligned",
        /// The free index holds exactly the free blocks, each under its stream and
        /// its segment's pool, keyed by its current size and address; its count is
        /// the number of free blocks. Kept in `free_index.rs`.
        F1 => "the free index is the free blocks",
        /// The statistics are sums over the structures: `allocated_bytes` = Σ in-use
        /// block sizes; `active_bytes` = Σ in-use and pending block sizes;
        /// `requested_bytes` = Σ requested bytes of in-use and pending blocks
        /// (PyTorch's: it drops when the free completes); `reserved_bytes` = Σ
        /// `mapped` over segments; and the matching counts of blocks and segments.
        T1 => "statistics are sums over blocks",
        /// `inactive_split` counts the free blocks of fixed segments that share
        /// their segment (PyTorch's definition: free pages of an expandable segment
        /// can always be released, so its free blocks are never "inactive split").
        T2 => "inactive split counts shared free blocks",
        /// A pending block waits for one event per stream that used it; each
        /// stream's events are queried in the order they were queued, stopping at
        /// the first that has not completed; the pending count is the number of
        /// pending blocks. A free's events are recorded with the engine lock
        /// released (a driver call each, and event creation when a pool runs
        /// dry): from its tick until they are queued, the block is pending and
        /// *being recorded*, completed meanwhile only by a device-wide sync that
        /// started after its tick (`core:L1`); events done with are dropped
        /// after the lock is released. An allocation queries the heads of the
        /// queues with the lock released too (they stay queued, shared, and
        /// are popped under the lock if still at the head). In equations, for
        /// every pending block `b` with deferral tick `t`: `events(b) =
        /// |{queued d : d.block = b}|`, every queued `d` has `d.tick = t(b)`,
        /// `recording(b) ⇒ queued(b) = 0`,
        /// `¬recording(b) ⇒ events(b) > 0 ∨ needs_sync(b)`, and
        /// `Σ_slots recording_on ≥ |{b : recording(b)}|`. Kept in `pending.rs`;
        /// tested by `tests/engine_events_unlocked.rs`,
        /// `tests/engine_events_race.rs`.
        P1 => "pending blocks wait for their events",
        /// A partial sync proves nothing idle: after a device-wide sync whose
        /// backend reported [`SyncCoverage::Partial`](crate::SyncCoverage)
        /// (some stream may still run work issued before it), no block is
        /// judged idle by the free clock (no sync mark is applied): a pending
        /// free completes only when its events do, a free block is released or
        /// moved to another stream only when its stream's event says idle, and
        /// `forget_stream` keeps a stream it could not wait for. Kept in
        /// `pending.rs`; tested by `tests/engine_partial_sync.rs`.
        P2 => "a partial sync proves nothing idle",
        /// In a replay [`Trace`](crate::replay::Trace), every slot is allocated by
        /// exactly one `Alloc` event, and slots are numbered `0..slots` in the order
        /// of their `Alloc` events. Kept in `replay/trace.rs`.
        R1 => "trace slots are allocated once, in order",
        /// In a replay [`Trace`](crate::replay::Trace), a slot is freed at most
        /// once, and only after its `Alloc`.
        R2 => "trace slots are freed once, after their alloc",
    }
}

alloc_scope::invariants! {
    /// A locking rule of the engine: not an equation over its structures (the
    /// checker cannot see it), but a rule on when the lock is held, which the
    /// reasoning about idle memory rests on. Displayed as its id with the crate
    /// prefix, `core:L1`, unique across the workspace.
    pub enum LockRule in "core" {
        /// The device-wide sync runs unlocked: a device-wide sync (the reclaim
        /// ladder's, `empty_cache`'s) runs outside the lock (it blocks for as
        /// long as the queued work runs); what it proves idle is decided by the
        /// free clock read under the lock before it (a sync mark): every free (an
        /// immediate one, or the deferral of a pending one) takes the next tick,
        /// and a free block remembers the latest tick of its parts. After the
        /// sync, a block freed before the mark is idle whoever completed its
        /// free; a block freed since (by another thread meanwhile) may be in use
        /// by work queued after the sync, so its stream is queried as usual.
        /// Kept in `pending.rs` and `reclaim.rs`; tested by
        /// `tests/engine_sync_unlocked.rs`.
        L1 => "device-wide sync runs unlocked",
        /// The engine lock before any shard lock: a front-cache shard's lock
        /// (`front.rs`) is taken either with no lock held (a hit, a push) or
        /// with the engine lock held (a fold, a drain), shards one at a
        /// time in slot order, and the engine lock is never taken while a
        /// shard's lock is held. So no two threads wait for each other's
        /// locks. Checked in debug builds: taking the engine lock while the
        /// thread holds a shard lock panics with this rule's id; tested by
        /// `tests/engine_front_cache.rs`.
        L2 => "the engine lock before any shard lock",
    }
}
