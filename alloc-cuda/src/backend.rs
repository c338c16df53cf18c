//! [`CudaBackend`]: segments from `cuMemAlloc`, pooled events on CUDA
//! streams, `cuMemGetInfo`, and expandable segments on CUDA virtual memory
//! where the driver and device offer it.
//!
//! Synchronisation: unmapping pages waits for no stream (freeing a fixed
//! segment does: see below). The engine unmaps
//! only free blocks whose stream it found idle (an event recorded and
//! queried) or after [`DeviceBackend::synchronize`], and blocks used on
//! other streams stay pending until those streams' events complete, so no
//! queued work can use the pages (the `unmap` contract). A device-wide
//! `cuCtxSynchronize` there would stall every unrelated stream.
//!
//! Graph capture: the driver calls of the slow path run in relaxed capture
//! mode (allocating and mapping is legal while another stream captures), no
//! event is recorded on a capturing stream (its work cannot be observed
//! until the capture ends: the engine keeps such blocks until a later
//! synchronise), `synchronize` waits only for the known streams that are not
//! capturing and reports a partial coverage (the engine then proves
//! nothing idle by it: `core:P2`), and `cuMemFree`/`cuMemAddressFree`, which
//! conflict with a capture, are deferred until no known stream captures.
//!
//! `cuMemFree` of a fixed segment synchronises the device (the driver waits
//! for all work of the context): releasing fixed segments (`empty_cache`,
//! the reclaim ladder) stalls every stream once. Expandable segments unmap
//! pages with `cuMemUnmap`, which waits for no stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaStream, sys};

use alloc_core::{BackendError, DeviceBackend, DevicePtr, MemInfo, SyncCoverage};

use crate::driver::{
    CurrentContext, RelaxedCapture, backend_error, capturing, check, cuda_available,
};
use crate::error::CudaError;
use crate::event::{EventPool, PooledEvent};
use crate::stream::{KnownStreams, StreamHandle};
use crate::vm::Vm;

/// Alignment the engine relies on for every segment (the driver aligns
/// `cuMemAlloc` results to at least this; a result that is not is refused).
pub const SEGMENT_ALIGN: usize = 512;

/// The memory of one CUDA device, for [`alloc_core::CachingAllocator`].
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    ordinal: usize,
    name: String,
    events: Arc<EventPool>,
    vm: Result<Vm, String>,
    /// Streams created for trace replay (`stream_for_id`), by id.
    replay_streams: Mutex<HashMap<u32, Arc<CudaStream>>>,
    /// Streams allocated or recorded on.
    known: KnownStreams,
    /// The cudarc streams allocations were made on, kept alive so that a
    /// stream the engine still keys blocks by is never destroyed (its handle
    /// reused or dangling) while this backend lives.
    retained: Mutex<Vec<Arc<CudaStream>>>,
    /// Releases asked for while a stream captured a graph, done later.
    deferred: Mutex<Vec<Deferred>>,
    /// Driver calls in paths that cannot return an error (free, unmap,
    /// release) that failed.
    driver_errors: AtomicU64,
    /// `synchronize` calls made while a stream captured a graph (only the
    /// streams not capturing were waited for).
    capture_syncs: AtomicU64,
}

/// A release that would have broken a graph capture.
#[derive(Debug, Clone, Copy)]
enum Deferred {
    /// `cuMemFree` of a fixed segment.
    Free(usize),
    /// `cuMemAddressFree` of a reservation with nothing mapped.
    AddressFree(usize, usize),
}

/// [`open_context`] and a filled event pool on that context.
pub(crate) fn open_context_with_events(
    ordinal: usize,
) -> Result<(Arc<CudaContext>, Arc<EventPool>), CudaError> {
    let ctx = open_context(ordinal)?;
    let events = EventPool::new(Arc::clone(&ctx)).map_err(|source| CudaError::Setup {
        device: ordinal,
        action: "creating the event pool",
        source,
    })?;
    Ok((ctx, events))
}

/// Retains the primary context of device `ordinal` (after the probe, so a
/// missing driver is an error, not a panic).
pub(crate) fn open_context(ordinal: usize) -> Result<Arc<CudaContext>, CudaError> {
    if !cuda_available() {
        return Err(CudaError::Unavailable);
    }
    let count = CudaContext::device_count().map_err(|e| {
        CudaError::driver(
            "cuDeviceGetCount",
            e,
            "check that the NVIDIA driver is loaded (nvidia-smi)",
        )
    })?;
    if ordinal >= count.max(0) as usize {
        return Err(CudaError::NoDevice {
            device: ordinal,
            count: count.max(0) as usize,
        });
    }
    // cudarc makes the new context current and leaves it so; restore the
    // caller's.
    let _saved = CurrentContext::save();
    CudaContext::new(ordinal).map_err(|e| {
        CudaError::driver(
            "cuDevicePrimaryCtxRetain",
            e,
            "check CUDA_VISIBLE_DEVICES and that no other process holds the device exclusively",
        )
    })
}

impl CudaBackend {
    /// The backend of device `ordinal`: retains its primary context, fills
    /// the event pool, and probes virtual memory.
    pub fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        let (ctx, events) = open_context_with_events(ordinal)?;
        let vm = Vm::probe(ctx.cu_device(), ordinal as i32);
        Ok(CudaBackend {
            ctx,
            ordinal,
            name: format!("cuda:{ordinal}"),
            events,
            vm,
            replay_streams: Mutex::new(HashMap::new()),
            known: KnownStreams::default(),
            retained: Mutex::new(Vec::new()),
            deferred: Mutex::new(Vec::new()),
            driver_errors: AtomicU64::new(0),
            capture_syncs: AtomicU64::new(0),
        })
    }

    /// The device's (primary) context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Why expandable segments are unavailable, or `None` when they are.
    pub fn vm_unavailable_reason(&self) -> Option<&str> {
        self.vm.as_ref().err().map(String::as_str)
    }

    /// Pages of expandable segments mapped now.
    pub fn mapped_pages(&self) -> usize {
        self.vm.as_ref().map_or(0, Vm::mapped_pages)
    }

    /// Events waiting in the pool.
    pub fn pooled_events(&self) -> usize {
        self.events.free_len()
    }

    /// Driver calls that failed where no error can be returned (free, unmap,
    /// release of a reservation); `0` on a healthy device.
    pub fn driver_errors(&self) -> u64 {
        self.driver_errors.load(Ordering::Relaxed)
    }

    /// `synchronize` calls made while a stream captured a CUDA graph.
    pub fn capture_syncs(&self) -> u64 {
        self.capture_syncs.load(Ordering::Relaxed)
    }

    /// Releases waiting for a graph capture to end.
    pub fn deferred_releases(&self) -> usize {
        lock(&self.deferred).len()
    }

    /// The streams this backend has seen (allocated or recorded on).
    pub fn known_streams(&self) -> Vec<StreamHandle> {
        self.known.list()
    }

    /// Notes a stream that allocations are made on (raw handles, from the C
    /// ABI): [`synchronize`](DeviceBackend::synchronize) and the capture
    /// checks look at the streams noted.
    #[inline]
    pub fn note_stream(&self, stream: StreamHandle) {
        self.known.note(stream);
    }

    /// Notes a cudarc stream and keeps it alive as long as this backend, so
    /// its handle stays valid while blocks are keyed by it.
    #[inline]
    pub fn retain_stream(&self, stream: &Arc<CudaStream>) {
        if self.known.note(StreamHandle::of(stream)) {
            lock(&self.retained).push(Arc::clone(stream));
        }
    }

    /// Whether one of the known streams usable from this thread is capturing
    /// a CUDA graph.
    fn capture_under_way(&self) -> bool {
        self.known
            .list()
            .into_iter()
            .filter(|s| s.usable_here())
            .any(|s| capturing(s.as_raw()).unwrap_or(false))
    }

    /// Does the releases deferred during a capture, once none is under way
    /// (`force`: in any case, when the backend goes away). The context is
    /// current.
    fn flush_deferred(&self, force: bool) {
        if lock(&self.deferred).is_empty() || (!force && self.capture_under_way()) {
            return;
        }
        let list = std::mem::take(&mut *lock(&self.deferred));
        for d in list {
            let ok = match d {
                // SAFETY: a live segment the engine gave back (deallocate's
                // contract), not freed since.
                Deferred::Free(ptr) => check(unsafe { sys::cuMemFree_v2(ptr as sys::CUdeviceptr) }),
                Deferred::AddressFree(ptr, bytes) => {
                    // SAFETY: a live reservation with nothing mapped
                    // (release's contract), not freed since.
                    check(unsafe { sys::cuMemAddressFree(ptr as sys::CUdeviceptr, bytes) })
                }
            };
            if ok.is_err() {
                self.note_failure(1);
            }
        }
    }

    /// Makes the device's context current until the guard drops.
    #[inline]
    fn bind(&self) -> Result<CurrentContext, BackendError> {
        CurrentContext::enter(self.ctx.cu_ctx())
    }

    #[cold]
    fn note_failure(&self, n: u64) {
        self.driver_errors.fetch_add(n, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// SAFETY: (1) segments come from `cuMemAlloc`, which returns fresh device
// memory overlapping no live allocation, and a result not aligned to
// SEGMENT_ALIGN is freed and refused; a free deferred during a capture keeps
// its memory out of reach until it is done; (2) reservations come from
// `cuMemAddressReserve` aligned to the page size, and `map` backs exactly the
// named pages; (3) events are recorded with `cuEventRecord` and reported done
// only when `cuEventQuery` returns CUDA_SUCCESS; streams whose work cannot be
// observed (capturing, another thread's per-thread stream) get no event but
// an error, which the engine treats as busy until it synchronises;
// `synchronize` is `cuCtxSynchronize`, which returns when every stream of the
// context is idle (reported `SyncCoverage::All`); while a graph is captured
// it waits only for the known streams not capturing and reports
// `SyncCoverage::Partial`, as it does when a call failed.
unsafe impl DeviceBackend for CudaBackend {
    type Stream = StreamHandle;
    type Event = PooledEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn alignment(&self) -> usize {
        SEGMENT_ALIGN
    }

    fn stream_for_id(&self, id: u32) -> StreamHandle {
        if id == 0 {
            return StreamHandle::DEFAULT;
        }
        let mut streams = self
            .replay_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = streams.get(&id) {
            return StreamHandle::of(s);
        }
        // cudarc makes the context current without restoring; the guard
        // restores the caller's.
        let _cur = self.bind();
        match self.ctx.new_stream() {
            Ok(s) => {
                let h = StreamHandle::of(&s);
                streams.insert(id, s);
                h
            }
            // No stream to be had: the default stream orders everything.
            Err(_) => StreamHandle::DEFAULT,
        }
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        let _cur = self.bind()?;
        let _relaxed = RelaxedCapture::enter();
        self.flush_deferred(false);
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: `ptr` is a valid out-pointer; the context is current.
        check(unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) })
            .map_err(|e| backend_error("cuMemAlloc_v2", e))?;
        if ptr as usize % SEGMENT_ALIGN != 0 {
            // SAFETY: `ptr` was just allocated and nothing uses it.
            let _ = unsafe { sys::cuMemFree_v2(ptr) };
            return Err(BackendError::Other(format!(
                "cuMemAlloc_v2 returned {ptr:#x}, not aligned to {SEGMENT_ALIGN} B"
            )));
        }
        Ok(DevicePtr(ptr as usize))
    }

    unsafe fn deallocate(&self, ptr: DevicePtr, _bytes: usize) {
        let cur = self.bind();
        if cur.is_ok() && self.capture_under_way() {
            lock(&self.deferred).push(Deferred::Free(ptr.0));
            return;
        }
        let ok = cur.is_ok()
            // SAFETY: the caller passes one live segment from `allocate` that
            // no pending work uses.
            && check(unsafe { sys::cuMemFree_v2(ptr.0 as sys::CUdeviceptr) }).is_ok();
        drop(cur);
        if !ok {
            self.note_failure(1);
        }
    }

    fn record_event(&self, stream: StreamHandle) -> Result<PooledEvent, BackendError> {
        self.known.note(stream);
        self.events.record_observable(stream)
    }

    fn event_done(&self, event: &PooledEvent) -> bool {
        event.is_done()
    }

    fn wait_event(&self, event: &PooledEvent) {
        if !event.wait() {
            self.note_failure(1);
        }
    }

    fn synchronize(&self) -> SyncCoverage {
        let Ok(cur) = self.bind() else {
            self.note_failure(1);
            return SyncCoverage::Partial;
        };
        if !self.capture_under_way() {
            let ok = cur.synchronize();
            if !ok {
                self.note_failure(1);
            }
            self.flush_deferred(false);
            // cuCtxSynchronize waits for every stream of the context; when
            // it failed (a capture on a stream this backend does not know),
            // nothing is proven idle
            return if ok {
                SyncCoverage::All
            } else {
                SyncCoverage::Partial
            };
        }
        // A context-wide synchronise would break the capture: wait for the
        // known streams that are not capturing. The capturing streams,
        // other threads' per-thread streams and streams past the known
        // table are not waited for, so the engine may prove nothing idle by
        // this sync (core:P2): it says so.
        self.capture_syncs.fetch_add(1, Ordering::Relaxed);
        for s in self.known.list().into_iter().filter(|s| s.usable_here()) {
            if capturing(s.as_raw()) == Ok(false) {
                // SAFETY: a stream this backend was handed, usable on this
                // thread, not capturing.
                if check(unsafe { sys::cuStreamSynchronize(s.as_raw()) }).is_err() {
                    self.note_failure(1);
                }
            }
        }
        SyncCoverage::Partial
    }

    fn mem_info(&self) -> Option<MemInfo> {
        let _cur = self.bind().ok()?;
        let _relaxed = RelaxedCapture::enter();
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: both are valid out-pointers; the context is current.
        check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }).ok()?;
        Some(MemInfo { free, total })
    }

    fn page_size(&self) -> Option<usize> {
        self.vm.as_ref().ok().map(|vm| vm.page)
    }

    fn reserve(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        match &self.vm {
            Ok(vm) => {
                let _cur = self.bind()?;
                let _relaxed = RelaxedCapture::enter();
                vm.reserve(bytes)
            }
            Err(why) => Err(BackendError::Other(format!(
                "{}: no expandable segments: {why}",
                self.name
            ))),
        }
    }

    unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        let Ok(vm) = &self.vm else {
            return Err(BackendError::Other(format!(
                "{}: map without virtual memory",
                self.name
            )));
        };
        let _cur = self.bind()?;
        let _relaxed = RelaxedCapture::enter();
        // SAFETY: forwarded from the caller (unmapped pages of one live
        // reservation of this backend).
        unsafe { vm.map(ptr, bytes) }
    }

    unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) {
        let Ok(vm) = &self.vm else { return };
        // No synchronise: the caller guarantees no queued work uses the pages
        // (see the module docs for how the engine establishes it).
        let Ok(cur) = self.bind() else {
            self.note_failure(1);
            return;
        };
        let relaxed = RelaxedCapture::enter();
        // SAFETY: forwarded from the caller (mapped pages no queued work
        // uses).
        let failed = unsafe { vm.unmap(ptr, bytes) };
        drop(relaxed);
        drop(cur);
        if failed > 0 {
            self.note_failure(failed as u64);
        }
    }

    unsafe fn release(&self, ptr: DevicePtr, bytes: usize) {
        let Ok(vm) = &self.vm else { return };
        let cur = self.bind();
        if cur.is_ok() && self.capture_under_way() {
            lock(&self.deferred).push(Deferred::AddressFree(ptr.0, bytes));
            return;
        }
        // SAFETY: forwarded from the caller (one live reservation with
        // nothing mapped).
        if cur.is_err() || !unsafe { vm.release(ptr, bytes) } {
            self.note_failure(1);
        }
        drop(cur);
    }
}

/// Does the releases still deferred by a capture (the engine has released
/// everything it held before its backend is dropped).
impl Drop for CudaBackend {
    fn drop(&mut self) {
        if let Ok(_cur) = self.bind() {
            self.flush_deferred(true);
        }
    }
}

impl core::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.ordinal)
            .field("page_size", &self.page_size())
            .field("vm_unavailable", &self.vm_unavailable_reason())
            .finish()
    }
}
