//! The Metal device on Apple targets: segments are `MTLBuffer`s, streams are
//! `MTLCommandQueue`s, events are values of one `MTLSharedEvent` per queue.
//!
//! # Invariants
//! The device keeps [`MpsInvariant::A1`] (segments never overlap, with
//! addresses in steps of [`ADDRESS_GRANULE`]) and [`MpsInvariant::A2`] (queue
//! values commit in order); their definitions are on the variants.

use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use objc2::rc::Retained;
use objc2::runtime::ProtocolObject;
use objc2_metal::{
    MTLBuffer, MTLCommandBuffer, MTLCommandQueue, MTLCreateSystemDefaultDevice, MTLDevice,
    MTLResourceOptions, MTLSharedEvent,
};

use alloc_core::{BackendError, DevicePtr, MemInfo};

#[cfg(doc)]
use crate::MpsInvariant;

use crate::error::MetalError;
use crate::stream::MetalStream;

/// A Metal buffer as objc2-metal names it.
pub type RawBuffer = ProtocolObject<dyn MTLBuffer>;
type RawDevice = ProtocolObject<dyn MTLDevice>;
type RawQueue = ProtocolObject<dyn MTLCommandQueue>;
type RawEvent = ProtocolObject<dyn MTLSharedEvent>;

/// Segments are placed at multiples of 16 KiB (the Apple-silicon page), so
/// every block address is aligned far beyond the engine's 512 B.
pub(crate) const ADDRESS_GRANULE: usize = 16 << 10;

/// The first segment address: not 0, so no segment is mistaken for null.
const ADDRESS_BASE: usize = 1 << 40;

/// How long one wait on a shared event lasts before it is renewed, ms.
const WAIT_SLICE_MS: u64 = 1000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent across a panic (each update is one insert or
    // remove), so a poisoned lock is still the best information there is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One segment's `MTLBuffer`.
#[derive(Clone)]
pub(crate) struct Segment(Retained<RawBuffer>);

// SAFETY: the crate only retains and releases the buffer (atomic in the
// Objective-C runtime, from any thread) and reads `length` and `contents`,
// which are fixed when Metal creates the buffer; Metal objects have no
// thread affinity. Users get their own `Retained` clone (`raw`), which objc2
// keeps !Send/!Sync, so no other method is called through this type.
unsafe impl Send for Segment {}
// SAFETY: as for Send: the only calls through `&Segment` are retain and the
// two read-only properties above.
unsafe impl Sync for Segment {}

impl Segment {
    /// The buffer, retained for the caller.
    pub(crate) fn raw(&self) -> Retained<RawBuffer> {
        self.0.clone()
    }

    /// The buffer's length in bytes.
    pub(crate) fn length(&self) -> usize {
        self.0.length()
    }

    /// The CPU address of the buffer's first byte, or `None` for
    /// private storage, whose memory the CPU cannot see.
    pub(crate) fn contents(&self, cpu_visible: bool) -> Option<NonNull<u8>> {
        // Apple: `contents` is NULL for private storage, which objc2's
        // `NonNull` return cannot express, so it is only called for shared
        // storage (Device::cpu_visible).
        cpu_visible.then(|| self.0.contents().cast())
    }
}

/// A completion marker: `event` reaches `value` once the work committed to
/// the queue before it was recorded has completed.
pub struct MetalEvent {
    event: Retained<RawEvent>,
    value: u64,
}

impl MetalEvent {
    /// The value the queue's shared event will reach.
    pub fn value(&self) -> u64 {
        self.value
    }
}

impl core::fmt::Debug for MetalEvent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MetalEvent")
            .field("value", &self.value)
            .finish()
    }
}

/// A command queue and the shared event its signals advance.
struct Queue {
    queue: Retained<RawQueue>,
    event: Retained<RawEvent>,
    /// The last value committed ([`MpsInvariant::A2`]).
    last: Mutex<u64>,
}

impl Queue {
    fn new(device: &RawDevice, name: &str) -> Result<Queue, MetalError> {
        let missing = |what| MetalError::Resource {
            device: name.to_owned(),
            what,
        };
        Ok(Queue {
            queue: device
                .newCommandQueue()
                .ok_or_else(|| missing("a command queue"))?,
            event: device
                .newSharedEvent()
                .ok_or_else(|| missing("a shared event"))?,
            last: Mutex::new(0),
        })
    }

    /// Commits an empty command buffer that signals the next value, which
    /// the event reaches after everything committed before it (the queue
    /// runs its command buffers in commit order).
    fn signal(&self) -> Result<MetalEvent, BackendError> {
        let mut last = lock(&self.last);
        let cb = self.queue.commandBuffer().ok_or_else(|| {
            BackendError::Other("MTLCommandQueue commandBuffer returned nil".into())
        })?;
        let value = *last + 1;
        cb.encodeSignalEvent_value(ProtocolObject::from_ref(&*self.event), value);
        cb.commit();
        *last = value;
        Ok(MetalEvent {
            event: self.event.clone(),
            value,
        })
    }
}

/// One Metal device with its queues and live segments.
pub(crate) struct Device {
    device: Retained<RawDevice>,
    name: String,
    unified: bool,
    options: MTLResourceOptions,
    /// Refuse a new buffer when the device's allocated size would pass this
    /// many bytes (0: no limit).
    watermark: AtomicU64,
    queues: Mutex<HashMap<u32, Arc<Queue>>>,
    segments: Mutex<BTreeMap<usize, Segment>>,
    next_addr: AtomicUsize,
}

impl Device {
    pub(crate) fn system_default() -> Result<Device, MetalError> {
        Device::from_raw(MTLCreateSystemDefaultDevice().ok_or(MetalError::NoDevice)?)
    }

    #[cfg(target_os = "macos")]
    pub(crate) fn nth(index: usize) -> Result<Device, MetalError> {
        let all = objc2_metal::MTLCopyAllDevices();
        let count = all.count();
        if index >= count {
            return Err(if count == 0 {
                MetalError::NoDevice
            } else {
                MetalError::DeviceOutOfRange { index, count }
            });
        }
        Device::from_raw(all.objectAtIndex(index))
    }

    #[cfg(not(target_os = "macos"))]
    pub(crate) fn nth(index: usize) -> Result<Device, MetalError> {
        // iOS and its relatives have one device, the system default.
        match index {
            0 => Device::system_default(),
            _ => Err(MetalError::DeviceOutOfRange { index, count: 1 }),
        }
    }

    pub(crate) fn from_raw(device: Retained<RawDevice>) -> Result<Device, MetalError> {
        let name = device.name().to_string();
        let unified = device.hasUnifiedMemory();
        // Unified memory (Apple silicon): shared storage is the GPU's own
        // memory and the CPU sees it too. A discrete GPU: private storage in
        // video memory. Hazard tracking stays on, so passes on one queue that
        // touch blocks of the same segment are ordered by Metal.
        let storage = if unified {
            MTLResourceOptions::StorageModeShared
        } else {
            MTLResourceOptions::StorageModePrivate
        };
        let options = storage
            | MTLResourceOptions::CPUCacheModeDefaultCache
            | MTLResourceOptions::HazardTrackingModeTracked;
        let first = Queue::new(&device, &name)?;
        let d = Device {
            device,
            name,
            unified,
            options,
            watermark: AtomicU64::new(0),
            queues: Mutex::new(HashMap::from([(0, Arc::new(first))])),
            segments: Mutex::new(BTreeMap::new()),
            next_addr: AtomicUsize::new(ADDRESS_BASE),
        };
        d.set_watermark_ratio(crate::backend::DEFAULT_HIGH_WATERMARK_RATIO)?;
        Ok(d)
    }

    pub(crate) fn raw(&self) -> &RawDevice {
        &self.device
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn unified(&self) -> bool {
        self.unified
    }

    /// Whether the CPU can read and write segments (shared storage).
    pub(crate) fn cpu_visible(&self) -> bool {
        self.unified
    }

    pub(crate) fn recommended_max_memory(&self) -> u64 {
        self.device.recommendedMaxWorkingSetSize()
    }

    pub(crate) fn driver_allocated_memory(&self) -> u64 {
        self.device.currentAllocatedSize() as u64
    }

    pub(crate) fn set_watermark_ratio(&self, ratio: f64) -> Result<Option<u64>, MetalError> {
        if !(ratio >= 0.0 && ratio.is_finite()) {
            return Err(MetalError::Watermark { ratio });
        }
        let bytes = (self.recommended_max_memory() as f64 * ratio) as u64;
        self.watermark.store(bytes, Ordering::Relaxed);
        Ok(self.watermark())
    }

    pub(crate) fn watermark(&self) -> Option<u64> {
        match self.watermark.load(Ordering::Relaxed) {
            0 => None,
            b => Some(b),
        }
    }

    fn queue(&self, stream: MetalStream) -> Result<Arc<Queue>, MetalError> {
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get(&stream.0) {
            return Ok(Arc::clone(q));
        }
        let q = Arc::new(Queue::new(&self.device, &self.name)?);
        queues.insert(stream.0, Arc::clone(&q));
        Ok(q)
    }

    pub(crate) fn new_stream(&self) -> Result<MetalStream, MetalError> {
        let mut queues = lock(&self.queues);
        let id =
            (0..=u32::MAX)
                .find(|id| !queues.contains_key(id))
                .ok_or(MetalError::Resource {
                    device: self.name.clone(),
                    what: "another command queue (all stream numbers are taken)",
                })?;
        queues.insert(id, Arc::new(Queue::new(&self.device, &self.name)?));
        Ok(MetalStream(id))
    }

    pub(crate) fn command_queue(
        &self,
        stream: MetalStream,
    ) -> Result<Retained<RawQueue>, MetalError> {
        Ok(self.queue(stream)?.queue.clone())
    }

    pub(crate) fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        if bytes == 0 {
            return Err(BackendError::Other(
                "allocate(0): segments are never empty".into(),
            ));
        }
        let max = self.device.maxBufferLength();
        if bytes > max {
            return Err(BackendError::Other(format!(
                "{bytes} B is more than Metal device `{}` allows in one buffer (maxBufferLength {max} B)",
                self.name
            )));
        }
        if let Some(w) = self.watermark() {
            if self.driver_allocated_memory().saturating_add(bytes as u64) > w {
                return Err(BackendError::OutOfMemory);
            }
        }
        // nil is Metal's only answer when it cannot back the buffer.
        let buffer = self
            .device
            .newBufferWithLength_options(bytes, self.options)
            .ok_or(BackendError::OutOfMemory)?;
        let span = bytes.next_multiple_of(ADDRESS_GRANULE);
        let addr = self.next_addr.fetch_add(span, Ordering::Relaxed);
        if addr.checked_add(span).is_none() {
            return Err(BackendError::Other(
                "the backend's address counter is exhausted".into(),
            ));
        }
        lock(&self.segments).insert(addr, Segment(buffer));
        Ok(DevicePtr(addr))
    }

    /// Releases the buffer of the segment at `ptr` (Metal keeps it alive
    /// while a command buffer that uses it is still pending).
    pub(crate) fn deallocate(&self, ptr: DevicePtr, bytes: usize) {
        let seg = lock(&self.segments).remove(&ptr.0);
        debug_assert!(
            seg.as_ref().is_some_and(|s| s.length() == bytes),
            "deallocate({:#x}, {bytes}): no live segment of that length",
            ptr.0
        );
        drop(seg);
    }

    /// The segment holding `ptr` and the offset of `ptr` in it.
    pub(crate) fn segment(&self, ptr: DevicePtr) -> Option<(Segment, usize)> {
        let segments = lock(&self.segments);
        let (&start, seg) = segments.range(..=ptr.0).next_back()?;
        let offset = ptr.0 - start;
        (offset < seg.length()).then(|| (seg.clone(), offset))
    }

    pub(crate) fn record_event(&self, stream: MetalStream) -> Result<MetalEvent, BackendError> {
        self.queue(stream)
            .map_err(|e| BackendError::Other(e.to_string()))?
            .signal()
    }

    pub(crate) fn event_done(&self, event: &MetalEvent) -> bool {
        event.event.signaledValue() >= event.value
    }

    /// Waits as long as it takes: giving up would let the engine reuse a
    /// block the GPU may still use.
    pub(crate) fn wait_event(&self, event: &MetalEvent) {
        while !self.event_done(event)
            && !event
                .event
                .waitUntilSignaledValue_timeoutMS(event.value, WAIT_SLICE_MS)
        {}
    }

    pub(crate) fn synchronize_stream(&self, stream: MetalStream) -> Result<(), MetalError> {
        let e = self
            .queue(stream)?
            .signal()
            .map_err(|_| MetalError::Resource {
                device: self.name.clone(),
                what: "a command buffer",
            })?;
        self.wait_event(&e);
        Ok(())
    }

    /// Signals and waits on every queue. A queue that cannot give a command
    /// buffer now is asked again (every millisecond): returning before the
    /// queues are idle would let the engine reuse memory still in use.
    pub(crate) fn synchronize(&self) {
        let queues: Vec<Arc<Queue>> = lock(&self.queues).values().cloned().collect();
        for q in queues {
            let e = loop {
                match q.signal() {
                    Ok(e) => break e,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            };
            self.wait_event(&e);
        }
    }

    pub(crate) fn mem_info(&self) -> Option<MemInfo> {
        let total = usize::try_from(self.recommended_max_memory()).ok()?;
        let used = self.device.currentAllocatedSize();
        Some(MemInfo {
            free: total.saturating_sub(used),
            total,
        })
    }
}
