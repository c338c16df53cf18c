//! [`MetalBackend`]: the engine's [`DeviceBackend`] on one Metal device.
//!
//! | engine word | Metal |
//! |---|---|
//! | segment | one `MTLBuffer` from `newBufferWithLength:options:`, shared storage on unified memory (Apple silicon), private storage on a discrete GPU |
//! | segment address | a backend-assigned address, 16 KiB aligned, never reused; [`MetalBackend::resolve`] maps any block address to its `MTLBuffer` and offset |
//! | stream | an `MTLCommandQueue` ([`MetalStream`] numbers it) |
//! | event | a value of the queue's `MTLSharedEvent`, signalled by an empty command buffer committed after the work to cover |
//! | free / total | `recommendedMaxWorkingSetSize` − `currentAllocatedSize` / `recommendedMaxWorkingSetSize` |
//! | out of memory | `newBufferWithLength` returned nil, or the device's allocated size would pass the high watermark |
//!
//! Expandable segments are not offered ([`DeviceBackend::page_size`] is
//! `None`, so the engine uses fixed segments whatever the configuration
//! says): a placement `MTLHeap` commits its whole size when it is created,
//! so it cannot reserve address space and back it later, and placement
//! sparse buffers (which could) need macOS 26.

use alloc_core::{BackendError, DeviceBackend, DevicePtr, MemInfo, SyncCoverage};

use crate::error::MetalError;
use crate::stream::MetalStream;
use crate::sys::{Device, MetalEvent, Segment};

/// The high watermark a new backend starts with, as a multiple of the
/// device's `recommendedMaxWorkingSetSize`: PyTorch's MPS default
/// (`PYTORCH_MPS_HIGH_WATERMARK_RATIO` = 1.7). Past it a new segment fails
/// with out of memory, so the engine releases cached segments first instead
/// of pushing the system into swap.
pub const DEFAULT_HIGH_WATERMARK_RATIO: f64 = 1.7;

/// The engine's backend on one Metal device.
pub struct MetalBackend {
    device: Device,
}

/// Where a block lives: its segment's `MTLBuffer` and the block's offset
/// in it (what a command encoder takes: `setBuffer:offset:atIndex:`).
pub struct Resolved {
    pub(crate) segment: Segment,
    pub(crate) offset: usize,
}

impl Resolved {
    /// The byte offset of the address in its segment's buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The segment's buffer length in bytes.
    pub fn segment_len(&self) -> usize {
        self.segment.length()
    }

    /// The segment's `MTLBuffer`, retained for the caller.
    #[cfg(target_vendor = "apple")]
    pub fn buffer(&self) -> objc2::rc::Retained<crate::sys::RawBuffer> {
        self.segment.raw()
    }
}

impl MetalBackend {
    /// The system's default Metal device (`MTLCreateSystemDefaultDevice`).
    /// On targets without Metal: [`MetalError::Unsupported`].
    pub fn system_default() -> Result<MetalBackend, MetalError> {
        Ok(MetalBackend {
            device: Device::system_default()?,
        })
    }

    /// Device `index` of `MTLCopyAllDevices` on macOS (several GPUs on some
    /// Intel Macs); elsewhere only index 0, the default device. On targets
    /// without Metal: [`MetalError::Unsupported`].
    pub fn new(index: usize) -> Result<MetalBackend, MetalError> {
        Ok(MetalBackend {
            device: Device::nth(index)?,
        })
    }

    /// A backend on a device the program already has (from wgpu, candle or
    /// its own `MTLCreateSystemDefaultDevice`).
    #[cfg(target_vendor = "apple")]
    pub fn from_device(
        device: objc2::rc::Retained<objc2::runtime::ProtocolObject<dyn objc2_metal::MTLDevice>>,
    ) -> Result<MetalBackend, MetalError> {
        Ok(MetalBackend {
            device: Device::from_raw(device)?,
        })
    }

    /// The Metal device.
    #[cfg(target_vendor = "apple")]
    pub fn device(&self) -> &objc2::runtime::ProtocolObject<dyn objc2_metal::MTLDevice> {
        self.device.raw()
    }

    /// The command queue of `stream` (created on first use).
    #[cfg(target_vendor = "apple")]
    pub fn command_queue(
        &self,
        stream: MetalStream,
    ) -> Result<
        objc2::rc::Retained<objc2::runtime::ProtocolObject<dyn objc2_metal::MTLCommandQueue>>,
        MetalError,
    > {
        self.device.command_queue(stream)
    }

    /// The device's name (`Apple M2 Max`).
    pub fn device_name(&self) -> &str {
        self.device.name()
    }

    /// Whether the device shares memory with the CPU (`hasUnifiedMemory`);
    /// segments then use shared storage and the CPU can read blocks.
    pub fn has_unified_memory(&self) -> bool {
        self.device.unified()
    }

    /// `recommendedMaxWorkingSetSize`: what the device can hold without
    /// hurting performance (PyTorch's `recommended_max_memory`).
    pub fn recommended_max_memory(&self) -> u64 {
        self.device.recommended_max_memory()
    }

    /// `currentAllocatedSize`: everything this process holds on the device,
    /// this backend's segments and any other Metal user's resources
    /// (PyTorch's `driver_allocated_memory`).
    pub fn driver_allocated_memory(&self) -> u64 {
        self.device.driver_allocated_memory()
    }

    /// Sets the high watermark to `ratio` × `recommendedMaxWorkingSetSize`
    /// (0 removes it); returns it in bytes.
    pub fn set_high_watermark_ratio(&self, ratio: f64) -> Result<Option<u64>, MetalError> {
        self.device.set_watermark_ratio(ratio)
    }

    /// The high watermark in bytes, if any.
    pub fn high_watermark(&self) -> Option<u64> {
        self.device.watermark()
    }

    /// A new command queue, as a stream.
    pub fn new_stream(&self) -> Result<MetalStream, MetalError> {
        self.device.new_stream()
    }

    /// The segment buffer holding `ptr`, and the offset of `ptr` in it.
    pub fn resolve(&self, ptr: DevicePtr) -> Option<Resolved> {
        self.device
            .segment(ptr)
            .map(|(segment, offset)| Resolved { segment, offset })
    }

    /// The CPU address of `resolved`, or `None` when the segments are in
    /// private storage.
    pub(crate) fn cpu_address(&self, resolved: &Resolved) -> Option<core::ptr::NonNull<u8>> {
        let base = resolved.segment.contents(self.device.cpu_visible())?;
        // SAFETY: `offset` < the segment's length (Device::segment), so the
        // result points into the buffer's allocation.
        Some(unsafe { base.add(resolved.offset) })
    }

    /// Waits until the work committed to `stream` so far has completed.
    pub fn synchronize_stream(&self, stream: MetalStream) -> Result<(), MetalError> {
        self.device.synchronize_stream(stream)
    }
}

impl core::fmt::Debug for MetalBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MetalBackend")
            .field("device", &self.device_name())
            .field("unified_memory", &self.has_unified_memory())
            .field("high_watermark", &self.high_watermark())
            .finish()
    }
}

// SAFETY:
// 1. `allocate` returns a fresh MTLBuffer of `bytes` bytes at an address from
//    a counter that only grows by the segment length rounded up to 16 KiB
//    (mps:A1): aligned to 16 KiB ≥ 512 and overlapping no live segment.
// 2. There is no reservation: `page_size` is `None`, so the engine never
//    calls `reserve` or `map` (their defaults fail).
// 3. `event_done` is true only once the queue's shared event reaches the
//    value signalled by a command buffer committed after all earlier work of
//    that queue (mps:A2). That this value is reached only after the
//    earlier command buffers complete rests on the queue running its command
//    buffers in commit order: Apple documents that a queue starts them in
//    that order, and PyTorch's MPS backend relies on the same for its
//    events; completion order is to be confirmed on hardware (README).
//    `synchronize` signals and waits on every queue.
unsafe impl DeviceBackend for MetalBackend {
    type Stream = MetalStream;
    type Event = MetalEvent;

    fn name(&self) -> &str {
        "mps"
    }

    fn stream_for_id(&self, id: u32) -> MetalStream {
        MetalStream(id)
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        self.device.allocate(bytes)
    }

    unsafe fn deallocate(&self, ptr: DevicePtr, bytes: usize) {
        self.device.deallocate(ptr, bytes);
    }

    fn record_event(&self, stream: MetalStream) -> Result<MetalEvent, BackendError> {
        self.device.record_event(stream)
    }

    fn event_done(&self, event: &MetalEvent) -> bool {
        self.device.event_done(event)
    }

    fn wait_event(&self, event: &MetalEvent) {
        self.device.wait_event(event);
    }

    fn synchronize(&self) -> SyncCoverage {
        // signals and waits on every queue of the device (retrying a queue
        // until it gives a command buffer), so no queue is skipped
        self.device.synchronize();
        SyncCoverage::All
    }

    fn mem_info(&self) -> Option<MemInfo> {
        self.device.mem_info()
    }
}
