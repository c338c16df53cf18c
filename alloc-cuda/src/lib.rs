#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod allocator;
pub mod backend;
pub mod buffer;
pub mod driver;
pub mod error;
pub mod event;
mod invariant;
pub mod pinned;
pub mod stream;
mod vm;

pub use allocator::{CudaAllocator, MAX_GLOBAL_DEVICES};
pub use backend::CudaBackend;
pub use buffer::CudaBuffer;
pub use driver::cuda_available;
pub use error::CudaError;
pub use invariant::CudaInvariant;
pub use pinned::{PinnedBuffer, PinnedHostBackend, PinnedPool};
pub use stream::{KnownStreams, StreamHandle};
pub use vm::MIN_VM_PAGE;

/// cudarc, re-exported so users name the same version (streams, contexts).
pub use cudarc;
