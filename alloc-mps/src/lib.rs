#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod allocator;
pub mod backend;
pub mod buffer;
pub mod error;
mod invariant;
pub mod stream;
mod sys;

pub use allocator::MetalAllocator;
pub use backend::{DEFAULT_HIGH_WATERMARK_RATIO, MetalBackend, Resolved};
pub use buffer::MetalBuffer;
pub use error::MetalError;
pub use invariant::MpsInvariant;
pub use stream::MetalStream;
pub use sys::MetalEvent;

/// objc2, objc2-foundation and objc2-metal, re-exported so users name the
/// same versions of the Metal types (devices, queues, buffers) as this crate.
#[cfg(target_vendor = "apple")]
pub use {objc2, objc2_foundation, objc2_metal};

/// Whether this build has Metal (an Apple target). A `true` here still needs
/// a device at run time: see [`MetalBackend::system_default`].
pub const METAL_BUILT: bool = cfg!(target_vendor = "apple");

// The engine is shared across threads and buffers move between them: keep
// these types Send + Sync on every target.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<MetalAllocator>();
    send_sync::<MetalBuffer<'static>>();
    send_sync::<MetalBackend>();
};
