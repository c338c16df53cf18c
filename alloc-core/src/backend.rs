//! The backend contract: the one boundary between the caching engine and the
//! memory it manages.
//!
//! A backend hands out *segments* (plain allocations), records *events* on
//! *streams*, reports device free/total, and may offer a *virtual-memory
//! capability*: reserve an address range, map and unmap pages inside it, and
//! release it. The engine builds expandable segments on that capability.

use core::fmt::Debug;
use core::hash::Hash;

/// An address in the backend's address space (a device pointer, a host
/// address, or a simulated one). It is only dereferenced by the backend's user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct DevicePtr(pub usize);

impl DevicePtr {
    /// The address as an integer.
    #[inline]
    pub const fn addr(self) -> usize {
        self.0
    }

    /// This address plus `bytes`, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, bytes: usize) -> Option<DevicePtr> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(DevicePtr(a)),
            None => None,
        }
    }
}

/// Free and total memory of a device, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemInfo {
    /// Bytes the device could still hand out.
    pub free: usize,
    /// Bytes the device has in all.
    pub total: usize,
}

/// Why a backend call failed. Only [`BackendError::OutOfMemory`] enters the
/// engine's reclaim ladder; every other failure is returned to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend has no memory left for this request.
    #[error("the backend is out of memory")]
    OutOfMemory,
    /// Any other failure, with the backend's own words.
    #[error("backend error: {0}")]
    Other(String),
}

/// What a device-wide [`DeviceBackend::synchronize`] waited for.
///
/// A backend that cannot wait for some stream (one capturing a CUDA graph,
/// another thread's per-thread stream, a stream it lost track of) says so
/// with [`SyncCoverage::Partial`]; the engine then proves nothing idle by
/// that sync and judges every stream by its events, as without a sync
/// ([`CoreInvariant::P2`](crate::CoreInvariant::P2)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a partial sync proves nothing idle: the engine must know which it was"]
pub enum SyncCoverage {
    /// Every stream of the device was idle when the call returned.
    All,
    /// Some stream may still run work issued before the call.
    Partial,
}

impl SyncCoverage {
    /// Whether every stream was waited for.
    #[inline]
    pub fn is_all(self) -> bool {
        self == SyncCoverage::All
    }
}

/// A memory provider the caching engine draws segments from.
///
/// # Safety
/// Implementors promise:
/// 1. a successful [`allocate`](Self::allocate) returns the start of `bytes`
///    usable bytes aligned to [`alignment`](Self::alignment), overlapping no
///    other live segment or mapped page of this backend;
/// 2. a successful [`reserve`](Self::reserve) returns an address range of
///    `bytes` bytes aligned to [`page_size`](Self::page_size) that overlaps no
///    other live segment or reservation, and a successful [`map`](Self::map)
///    makes exactly the named pages usable until they are unmapped;
/// 3. [`event_done`](Self::event_done) returns `true` only when all work issued
///    on the event's stream before it was recorded has completed, and
///    [`synchronize`](Self::synchronize) returns [`SyncCoverage::All`] only
///    when every stream is idle (otherwise it returns
///    [`SyncCoverage::Partial`]).
pub unsafe trait DeviceBackend: Send + Sync {
    /// A queue of work; `()` for memory that has only one (host memory).
    type Stream: Copy + Eq + Hash + Debug + Send + Sync + 'static;
    /// A completion marker recorded on a stream.
    type Event: Send + 'static;

    /// A short name for reports (`"host"`, `"sim"`).
    fn name(&self) -> &str;

    /// The alignment of every segment, in bytes (at least 512).
    fn alignment(&self) -> usize {
        512
    }

    /// The stream a trace's integer stream id denotes. Backends with a single
    /// stream return it for every id.
    fn stream_for_id(&self, id: u32) -> Self::Stream;

    /// Obtains a segment of `bytes` bytes.
    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError>;

    /// Returns a segment obtained from [`allocate`](Self::allocate).
    ///
    /// # Safety
    /// `ptr` and `bytes` are those of one live segment of this backend, and no
    /// work that uses it is still pending on any stream.
    unsafe fn deallocate(&self, ptr: DevicePtr, bytes: usize);

    /// Records an event on `stream` that completes when the work issued on it
    /// so far has completed.
    fn record_event(&self, stream: Self::Stream) -> Result<Self::Event, BackendError>;

    /// Whether `event` has completed (does not wait).
    fn event_done(&self, event: &Self::Event) -> bool;

    /// Waits until `event` has completed.
    fn wait_event(&self, event: &Self::Event);

    /// Waits until every stream of the device is idle, and says whether it
    /// could: [`SyncCoverage::Partial`] when some stream may still run work
    /// issued before the call (the engine then trusts only events).
    fn synchronize(&self) -> SyncCoverage;

    /// Free and total memory of the device, where the device knows them.
    fn mem_info(&self) -> Option<MemInfo>;

    /// The page size of the virtual-memory capability, or `None` when the
    /// backend cannot reserve and map address space (no expandable segments).
    fn page_size(&self) -> Option<usize> {
        None
    }

    /// Reserves `bytes` bytes of address space (a multiple of the page size),
    /// with nothing mapped.
    fn reserve(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        let _ = bytes;
        Err(BackendError::Other(format!(
            "backend `{}` has no virtual-memory capability",
            self.name()
        )))
    }

    /// Maps the pages of `[ptr, ptr + bytes)`, a page-aligned sub-range of one
    /// reservation.
    ///
    /// # Safety
    /// The range lies inside one live reservation of this backend and none of
    /// its pages is mapped.
    unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        let _ = (ptr, bytes);
        Err(BackendError::Other(format!(
            "backend `{}` has no virtual-memory capability",
            self.name()
        )))
    }

    /// Unmaps the pages of `[ptr, ptr + bytes)`.
    ///
    /// # Safety
    /// Every page of the range is mapped, inside one live reservation, and no
    /// work that uses it is still pending on any stream.
    unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) {
        let _ = (ptr, bytes);
    }

    /// Releases a reservation obtained from [`reserve`](Self::reserve).
    ///
    /// # Safety
    /// `ptr` and `bytes` are those of one live reservation with no page mapped.
    unsafe fn release(&self, ptr: DevicePtr, bytes: usize) {
        let _ = (ptr, bytes);
    }
}
