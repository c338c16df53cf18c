//! The platform layer: real Metal calls on Apple targets, an uninhabited
//! device elsewhere (its constructor is the only entry, and it fails with
//! [`MetalError::Unsupported`](crate::MetalError::Unsupported)).

#[cfg(target_vendor = "apple")]
mod apple;
#[cfg(target_vendor = "apple")]
pub(crate) use apple::{Device, Segment};
#[cfg(target_vendor = "apple")]
pub use apple::{MetalEvent, RawBuffer};

#[cfg(not(target_vendor = "apple"))]
mod unsupported;
#[cfg(not(target_vendor = "apple"))]
pub use unsupported::MetalEvent;
#[cfg(not(target_vendor = "apple"))]
pub(crate) use unsupported::{Device, Segment};
