#![doc = include_str!("../README.md")]
//!
//! A scope is a record in a fixed table (no allocation, so the host allocator
//! can charge it from inside `GlobalAlloc`). Scopes nest: a charge is applied to
//! the scope and every ancestor, so a parent's figures include its children and
//! its peak is the peak of that sum. Each block remembers its owner
//! ([`ScopeId`]) so that a free is charged back to the scope that allocated it,
//! on whatever thread and in whatever scope the free happens.
//!
//! Host and device charges are batched per thread (see [`BATCH_BYTES`] for the
//! exact error bound); charges to a chain with a budget are applied at once.

#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod counters;
mod id;
mod invariant;
mod record;
mod registry;
mod sync;

#[cfg(not(loom))]
mod aggregate;
#[cfg(not(loom))]
mod clock;
#[cfg(not(loom))]
mod handle;
#[cfg(not(loom))]
mod instrument;
#[cfg(not(loom))]
mod report;
#[cfg(not(loom))]
mod sketch;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod thread;
#[cfg(not(loom))]
mod validate;

#[cfg(all(test, loom))]
mod loom_tests;

pub use id::{COMPACT_SAMPLED, ScopeId, WORD_SAMPLED};
pub use invariant::ScopeInvariant;
pub use registry::{CAPACITY, MAX_DEPTH};

#[cfg(not(loom))]
pub use aggregate::{
    Bucket, FAILED_SUFFIX, MAX_NAMES, OTHER, PeakSummary, ScopeAggregate, aggregate, aggregates,
};
#[cfg(not(loom))]
pub use handle::{
    ScopeBuilder, ScopeError, ScopeGuard, ScopeHandle, SoftLimitExceeded, run_budget_callbacks,
    scope,
};
#[cfg(not(loom))]
pub use instrument::{InScope, Instrument};
#[cfg(not(loom))]
pub use report::{ScopeNode, ScopeTree, format_bytes, report, scope_tree, with_scope_name};
#[cfg(not(loom))]
pub use sketch::{BUCKETS as SKETCH_BUCKETS, SKETCH_BYTES};
#[cfg(not(loom))]
pub use stats::{
    DeviceScopeStats, RegistryStats, ScopeStats, process_stats, registry_stats, reset_peak,
};
#[cfg(not(loom))]
pub use thread::{
    BATCH_BYTES, BATCH_OPS, DEVICE_BATCH_BYTES, HostCharge, NOT_FAST, STACK_MAX, begin_host_alloc,
    begin_host_realloc, charge_device_alloc, charge_device_free, charge_host_free,
    charge_host_free_compact, current, finish_host_alloc, finish_host_realloc, flush,
    host_allocator_seen, host_fast_charge, host_fast_charge_due, host_fast_free_due, host_fast_id,
    host_fast_realloc_charge, host_fast_realloc_due, host_flush, host_sample_due,
    mark_host_allocator_seen, owner_from_compact, set_host_sample_left, track_host_alloc,
    untracked,
};
#[cfg(not(loom))]
pub use validate::{ScopeInvariantViolation, validate};
