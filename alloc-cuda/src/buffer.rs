//! [`CudaBuffer`]: a block of device memory from [`CudaAllocator`](crate::CudaAllocator),
//! usable wherever cudarc takes a [`DevicePtr`]/[`DevicePtrMut`]: copies,
//! memsets, and kernel arguments (`launch_builder(..).arg(&ptr)` with the
//! pointer from [`DevicePtr::device_ptr`]).
//!
//! It is not a `CudaSlice`: dropping it returns the block to the cache,
//! never to the driver.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop, sys};

use alloc_core::DeviceBuffer;

use crate::backend::CudaBackend;
use crate::stream::StreamHandle;

/// A block of device memory handed out by the caching engine.
pub struct CudaBuffer<'a> {
    inner: DeviceBuffer<'a, CudaBackend>,
    stream: Arc<CudaStream>,
}

impl<'a> CudaBuffer<'a> {
    pub(crate) fn new(inner: DeviceBuffer<'a, CudaBackend>, stream: Arc<CudaStream>) -> Self {
        CudaBuffer { inner, stream }
    }

    /// The device address of the block.
    #[inline]
    pub fn device_address(&self) -> sys::CUdeviceptr {
        self.inner.ptr().0 as sys::CUdeviceptr
    }

    /// Bytes asked for.
    #[inline]
    pub fn byte_len(&self) -> usize {
        self.inner.len()
    }

    /// Bytes the block holds (at least [`byte_len`](Self::byte_len)).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// The stream the buffer was allocated on.
    pub fn alloc_stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Marks the block as used by work on `stream`: after the buffer is
    /// dropped, the block is reused only once that work completes.
    /// [`DevicePtr::device_ptr`] on another stream does this itself.
    pub fn record_stream(&self, stream: &Arc<CudaStream>) {
        self.inner.record_stream(StreamHandle::of(stream));
    }

    /// The engine's buffer.
    pub fn inner(&self) -> &DeviceBuffer<'a, CudaBackend> {
        &self.inner
    }

    #[inline]
    fn note_use(&self, stream: &CudaStream) {
        let used_on = StreamHandle::from_raw(stream.cu_stream());
        if used_on != self.inner.stream() {
            self.inner.record_stream(used_on);
        }
    }
}

/// Elements of `T` in the buffer (bytes for zero-sized `T`).
impl<T> DeviceSlice<T> for CudaBuffer<'_> {
    fn len(&self) -> usize {
        self.inner.len() / core::mem::size_of::<T>().max(1)
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// Use on a stream other than the allocation stream is recorded
/// (`record_stream`), so the block outlives that stream's work. Ordering of
/// writes between streams is the caller's, as with PyTorch tensors.
impl<T> DevicePtr<T> for CudaBuffer<'_> {
    fn device_ptr<'a>(&'a self, stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        self.note_use(stream);
        (self.device_address(), SyncOnDrop::Record(None))
    }
}

impl<T> DevicePtrMut<T> for CudaBuffer<'_> {
    fn device_ptr_mut<'a>(
        &'a mut self,
        stream: &'a CudaStream,
    ) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        self.note_use(stream);
        (self.device_address(), SyncOnDrop::Record(None))
    }
}

impl core::fmt::Debug for CudaBuffer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CudaBuffer")
            .field("ptr", &format_args!("{:#x}", self.device_address()))
            .field("len", &self.byte_len())
            .field("capacity", &self.capacity())
            .finish()
    }
}
