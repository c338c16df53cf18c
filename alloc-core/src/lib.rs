#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Under `--cfg loom` the crate is the front cache alone (with the statistics
// it folds into and the lock rule it checks), for the loom models in
// `loom_tests.rs`: `RUSTFLAGS="--cfg loom" cargo test -p alloc-core --release
// --lib loom`.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

// The scope registry lives in its own crate (`alloc-scope`), shared with the
// host allocator; the engine charges device bytes to it at four points
// (allocate, free, the trace ring and snapshots) and formats bytes with its
// `format_bytes`.
#[cfg(not(loom))]
use alloc_scope as scope;

pub mod front;
mod invariant;
pub mod size_class;
pub mod stats;
pub(crate) mod sync;

#[cfg(not(loom))]
pub mod adaptors;
#[cfg(not(loom))]
pub mod backend;
#[cfg(not(loom))]
pub mod backends;
#[cfg(not(loom))]
pub(crate) mod block;
#[cfg(not(loom))]
pub mod buffer;
#[cfg(not(loom))]
pub mod cache;
#[cfg(not(loom))]
pub mod config;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub(crate) mod expandable;
#[cfg(not(loom))]
pub(crate) mod free_index;
#[cfg(not(loom))]
pub mod ops;
#[cfg(not(loom))]
pub(crate) mod pending;
#[cfg(not(loom))]
pub(crate) mod reclaim;
#[cfg(not(loom))]
pub mod replay;
#[cfg(not(loom))]
pub(crate) mod segment;
#[cfg(not(loom))]
pub mod snapshot;
#[cfg(not(loom))]
pub(crate) mod streams;
#[cfg(not(loom))]
pub mod trace;
#[cfg(not(loom))]
pub mod validate;

/// What the loom build keeps of the modules it leaves out: a block's id
/// (`block.rs`) and the byte formatter of the statistics' summary (the
/// registry's, which the registry's loom build leaves out; the models never
/// print it).
#[cfg(loom)]
mod block {
    pub(crate) type BlockId = u32;
}
#[cfg(loom)]
mod scope {
    pub(crate) fn format_bytes(bytes: u64) -> String {
        format!("{bytes} B")
    }
}

#[cfg(all(test, loom))]
mod loom_tests;

pub use invariant::{CoreInvariant, LockRule};
pub use stats::{Stat, StatArray, Stats};

#[cfg(not(loom))]
pub use backend::{BackendError, DeviceBackend, DevicePtr, MemInfo, SyncCoverage};
#[cfg(not(loom))]
pub use backends::{HostBackend, SimBackend, SimStream};
#[cfg(not(loom))]
pub use block::BlockState;
#[cfg(not(loom))]
pub use buffer::DeviceBuffer;
#[cfg(not(loom))]
pub use cache::CachingAllocator;
#[cfg(not(loom))]
pub use config::{Config, ConfigError};
#[cfg(not(loom))]
pub use error::{AllocError, OutOfMemory};
