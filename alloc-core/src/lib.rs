#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

// The scope registry lives in its own crate (`alloc-scope`), shared with the
// host allocator; the engine charges device bytes to it at four points
// (allocate, free, the trace ring and snapshots) and formats bytes with its
// `format_bytes`.
use alloc_scope as scope;

pub mod adaptors;
pub mod backend;
pub mod backends;
pub(crate) mod block;
pub mod buffer;
pub mod cache;
pub mod config;
pub mod error;
pub(crate) mod expandable;
pub(crate) mod free_index;
pub mod front;
mod invariant;
pub mod ops;
pub(crate) mod pending;
pub(crate) mod reclaim;
pub mod replay;
pub(crate) mod segment;
pub mod size_class;
pub mod snapshot;
pub mod stats;
pub(crate) mod streams;
pub mod trace;
pub mod validate;

pub use backend::{BackendError, DeviceBackend, DevicePtr, MemInfo, SyncCoverage};
pub use backends::{HostBackend, SimBackend, SimStream};
pub use block::BlockState;
pub use buffer::DeviceBuffer;
pub use cache::CachingAllocator;
pub use config::{Config, ConfigError};
pub use error::{AllocError, OutOfMemory};
pub use invariant::{CoreInvariant, LockRule};
pub use stats::{Stat, StatArray, Stats};
