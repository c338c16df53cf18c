#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

#[cfg(not(loom))]
pub mod replay;
pub mod scope;

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
pub(crate) mod segment;
#[cfg(not(loom))]
pub mod size_class;
#[cfg(not(loom))]
pub mod snapshot;
#[cfg(not(loom))]
pub mod stats;
#[cfg(not(loom))]
pub(crate) mod streams;
#[cfg(not(loom))]
pub mod trace;
#[cfg(not(loom))]
pub mod validate;

#[cfg(not(loom))]
pub use backend::{BackendError, DeviceBackend, DevicePtr, MemInfo};
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
#[cfg(not(loom))]
pub use stats::{Stat, StatArray, Stats};
