#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod classes;
#[doc(hidden)]
pub mod floor;
mod header;
mod invariant;
#[cfg(feature = "mimalloc")]
mod mimalloc_inner;
mod owner;
pub mod profile;
pub mod testing;
mod tracking;

pub use invariant::HostInvariant;
#[cfg(feature = "mimalloc")]
pub use mimalloc_inner::Mimalloc;
pub use profile::{HeapProfile, profile, set_sample_rate};
pub use tracking::{DefaultInner, TrackingAllocator, is_installed, set_tracking, tracking_enabled};

pub use alloc_scope::{
    BATCH_BYTES, BATCH_OPS, CAPACITY, DeviceScopeStats, FAILED_SUFFIX, InScope, Instrument,
    MAX_NAMES, OTHER, PeakSummary, RegistryStats, STACK_MAX, ScopeAggregate, ScopeBuilder,
    ScopeError, ScopeGuard, ScopeHandle, ScopeId, ScopeNode, ScopeStats, ScopeTree,
    SoftLimitExceeded, aggregate, aggregates, current, flush, format_bytes, process_stats,
    registry_stats, report, reset_peak, run_budget_callbacks, scope, scope_tree, untracked,
};

/// The scope tree as JSON (see [`scope_tree`]).
pub fn report_json() -> String {
    alloc_scope::untracked(|| {
        serde_json::to_string_pretty(&scope_tree())
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    })
}
