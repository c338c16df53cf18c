//! The pinned host pool: page-locked host memory from `cuMemHostAlloc`,
//! cached by the engine and reused only after the events of every stream it
//! was used on complete.
//!
//! Blocks are allocated on [`StreamHandle::HOST`]: the CPU uses host memory
//! at once, not in any stream's order, so a block used by a transfer on a
//! stream ([`PinnedBuffer::record_stream`]) waits for that stream's event
//! before anyone gets it again. Such a block never takes the engine's front
//! cache; its free records the event (`cuEventRecord`, and a batch of
//! `cuEventCreate` when the event pool runs dry), the next allocations
//! query it (`cuEventQuery`) and drop it, all with the engine lock released
//! (`core:P1`), so one thread's driver call does not stall the others'
//! allocations. The pool itself is still one engine behind one lock.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, sys};

use alloc_core::{
    BackendError, CachingAllocator, Config, DeviceBackend, DeviceBuffer, DevicePtr, MemInfo,
    SyncCoverage,
};

use crate::backend::open_context_with_events;
use crate::driver::{CurrentContext, backend_error, check};
use crate::error::CudaError;
use crate::event::{EventPool, PooledEvent};
use crate::stream::StreamHandle;

/// Page-locked host memory of one device's context.
pub struct PinnedHostBackend {
    ctx: Arc<CudaContext>,
    events: Arc<EventPool>,
}

/// A completion marker for pinned memory: host use is complete at once.
#[derive(Debug)]
pub enum PinnedEvent {
    /// Recorded on [`StreamHandle::HOST`]: complete.
    Host,
    /// Recorded on a CUDA stream.
    Device(PooledEvent),
}

impl PinnedHostBackend {
    /// Pinned memory registered with the context of device `ordinal`.
    pub fn new(ordinal: usize) -> Result<PinnedHostBackend, CudaError> {
        let (ctx, events) = open_context_with_events(ordinal)?;
        Ok(PinnedHostBackend { ctx, events })
    }

    fn bind(&self) -> Result<CurrentContext, BackendError> {
        CurrentContext::enter(self.ctx.cu_ctx())
    }
}

// SAFETY: (1) segments come from `cuMemHostAlloc`, fresh page-locked memory
// (page aligned, ≥ 512) overlapping nothing live; (2) no virtual-memory
// capability; (3) host events are complete when recorded (the CPU is
// synchronous), device events are done only when `cuEventQuery` says so, and
// `synchronize` is `cuCtxSynchronize`, reported partial when it failed.
unsafe impl DeviceBackend for PinnedHostBackend {
    type Stream = StreamHandle;
    type Event = PinnedEvent;

    fn name(&self) -> &str {
        "cuda-pinned-host"
    }

    fn stream_for_id(&self, _id: u32) -> StreamHandle {
        StreamHandle::HOST
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        let _cur = self.bind()?;
        let mut p: *mut core::ffi::c_void = core::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: `p` is a valid out-pointer; the context is current.
        check(unsafe { sys::cuMemHostAlloc(&mut p, bytes, flags) })
            .map_err(|e| backend_error("cuMemHostAlloc", e))?;
        // Zeroed once, so `PinnedBuffer::as_slice` never shows uninitialised
        // bytes (this is the slow path: segments are cached).
        // SAFETY: `p` is `bytes` writable bytes just allocated for us.
        unsafe { core::ptr::write_bytes(p.cast::<u8>(), 0, bytes) };
        Ok(DevicePtr(p as usize))
    }

    unsafe fn deallocate(&self, ptr: DevicePtr, _bytes: usize) {
        let _cur = self.bind();
        // SAFETY: the caller passes one live segment from `allocate` that no
        // pending work uses.
        let _ = unsafe { sys::cuMemFreeHost(ptr.0 as *mut core::ffi::c_void) };
    }

    fn record_event(&self, stream: StreamHandle) -> Result<PinnedEvent, BackendError> {
        if stream == StreamHandle::HOST {
            return Ok(PinnedEvent::Host);
        }
        self.events
            .record_observable(stream)
            .map(PinnedEvent::Device)
    }

    fn event_done(&self, event: &PinnedEvent) -> bool {
        match event {
            PinnedEvent::Host => true,
            PinnedEvent::Device(e) => e.is_done(),
        }
    }

    fn wait_event(&self, event: &PinnedEvent) {
        if let PinnedEvent::Device(e) = event {
            e.wait();
        }
    }

    fn synchronize(&self) -> SyncCoverage {
        match self.bind() {
            Ok(cur) if cur.synchronize() => SyncCoverage::All,
            // no context, or the driver refused (a graph capture under way):
            // nothing was waited for
            _ => SyncCoverage::Partial,
        }
    }

    fn mem_info(&self) -> Option<MemInfo> {
        None
    }
}

/// A caching pool of pinned host memory.
pub struct PinnedPool {
    engine: CachingAllocator<PinnedHostBackend>,
}

impl PinnedPool {
    /// A pool registered with the context of device `ordinal`, with the
    /// engine's default settings (fixed segments: host memory has no
    /// virtual-memory capability here).
    pub fn new(ordinal: usize) -> Result<PinnedPool, CudaError> {
        Ok(PinnedPool {
            engine: CachingAllocator::new(PinnedHostBackend::new(ordinal)?, Config::default()),
        })
    }

    /// The engine (stats, snapshot, empty_cache, ...).
    pub fn engine(&self) -> &CachingAllocator<PinnedHostBackend> {
        &self.engine
    }

    /// `bytes` bytes of pinned host memory, not used by any pending transfer.
    pub fn allocate(&self, bytes: usize) -> Result<PinnedBuffer<'_>, CudaError> {
        Ok(PinnedBuffer {
            inner: self.engine.allocate(bytes, StreamHandle::HOST)?,
        })
    }
}

/// Releases the cached segments (buffers borrow the pool, so none is live).
impl Drop for PinnedPool {
    fn drop(&mut self) {
        self.engine.empty_cache();
    }
}

/// A block of pinned host memory; returns to the pool on drop, reused once
/// the events of the streams named by [`record_stream`](Self::record_stream)
/// complete.
pub struct PinnedBuffer<'a> {
    inner: DeviceBuffer<'a, PinnedHostBackend>,
}

impl PinnedBuffer<'_> {
    /// The start of the memory.
    pub fn as_ptr(&self) -> *const u8 {
        self.inner.ptr().0 as *const u8
    }

    /// The start of the memory, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.inner.ptr().0 as *mut u8
    }

    /// Bytes asked for.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether zero bytes were asked for.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The memory as bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the block holds `len()` initialised bytes (segments are
        // zeroed when allocated) of host memory owned by this buffer for the
        // borrow; transfers that write it were started through
        // raw pointers, whose callers order them before this read.
        unsafe { core::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The memory as mutable bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as `as_slice`, and `&mut self` makes the borrow exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.as_mut_ptr(), len) }
    }

    /// Marks the memory as used by a transfer on `stream`.
    pub fn record_stream(&self, stream: &Arc<CudaStream>) {
        self.inner.record_stream(StreamHandle::of(stream));
    }

    /// Marks the memory as used by work on a raw stream.
    pub fn record_raw_stream(&self, stream: StreamHandle) {
        self.inner.record_stream(stream);
    }
}

impl core::fmt::Debug for PinnedBuffer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PinnedBuffer")
            .field("ptr", &self.as_ptr())
            .field("len", &self.len())
            .finish()
    }
}
