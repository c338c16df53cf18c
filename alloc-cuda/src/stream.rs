//! [`StreamHandle`]: the engine's name for a CUDA stream.

use std::sync::Arc;

use cudarc::driver::{CudaStream, sys};

/// A CUDA stream as the engine keys it: the raw `CUstream` as an integer
/// (`0` is the legacy default stream). It is only ever passed back to the
/// driver, never dereferenced.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StreamHandle(pub usize);

impl StreamHandle {
    /// The legacy default stream (`NULL`).
    pub const DEFAULT: StreamHandle = StreamHandle(0);

    /// The host, for the pinned pool: memory the CPU uses is in use until the
    /// events of every stream it was used on complete.
    pub const HOST: StreamHandle = StreamHandle(usize::MAX);

    /// The handle of a raw stream (for example a `cudaStream_t` from PyTorch).
    pub fn from_raw(stream: sys::CUstream) -> StreamHandle {
        StreamHandle(stream as usize)
    }

    /// The handle of a cudarc stream.
    pub fn of(stream: &Arc<CudaStream>) -> StreamHandle {
        StreamHandle::from_raw(stream.cu_stream())
    }

    /// The raw stream.
    pub fn as_raw(self) -> sys::CUstream {
        self.0 as sys::CUstream
    }
}

impl core::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            StreamHandle::DEFAULT => f.write_str("default"),
            StreamHandle::HOST => f.write_str("host"),
            StreamHandle(s) => write!(f, "{s:#x}"),
        }
    }
}
