//! Backend adaptors in the style of RMM's resource adaptors: each wraps a
//! backend and is a backend, composed with static generics
//! (`LoggingBackend<LimitBackend<SimBackend>>`), no `dyn` on the hot path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::backend::{BackendError, DeviceBackend, DevicePtr, MemInfo};

/// Forwards the stream, event and info methods of [`DeviceBackend`] to `self.inner`.
macro_rules! forward_common {
    () => {
        type Stream = B::Stream;
        type Event = B::Event;
        fn alignment(&self) -> usize {
            self.inner.alignment()
        }
        fn stream_for_id(&self, id: u32) -> B::Stream {
            self.inner.stream_for_id(id)
        }
        fn record_event(&self, stream: B::Stream) -> Result<B::Event, BackendError> {
            self.inner.record_event(stream)
        }
        fn event_done(&self, event: &B::Event) -> bool {
            self.inner.event_done(event)
        }
        fn wait_event(&self, event: &B::Event) {
            self.inner.wait_event(event)
        }
        fn synchronize(&self) -> $crate::backend::SyncCoverage {
            self.inner.synchronize()
        }
        fn page_size(&self) -> Option<usize> {
            self.inner.page_size()
        }
        fn reserve(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
            self.inner.reserve(bytes)
        }
        unsafe fn release(&self, ptr: DevicePtr, bytes: usize) {
            // SAFETY: forwarded with the caller's guarantee.
            unsafe { self.inner.release(ptr, bytes) }
        }
    };
}

/// Caps the bytes of segments and mapped pages at `limit`; past it,
/// allocation and mapping fail with out of memory.
pub struct LimitBackend<B> {
    inner: B,
    limit: usize,
    used: AtomicUsize,
}

impl<B: DeviceBackend> LimitBackend<B> {
    /// Wraps `inner` with a cap of `limit` bytes.
    pub fn new(inner: B, limit: usize) -> Self {
        LimitBackend {
            inner,
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes obtained through this adaptor and not returned.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn take(&self, bytes: usize) -> Result<(), BackendError> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| BackendError::OutOfMemory)
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every region comes from `inner`, which upholds the contract; the
// adaptor only refuses some requests.
unsafe impl<B: DeviceBackend> DeviceBackend for LimitBackend<B> {
    forward_common!();

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        self.take(bytes)?;
        self.inner.allocate(bytes).inspect_err(|_| self.give(bytes))
    }

    unsafe fn deallocate(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.deallocate(ptr, bytes) };
        self.give(bytes);
    }

    fn mem_info(&self) -> Option<MemInfo> {
        let used = self.used();
        let own = MemInfo {
            free: self.limit.saturating_sub(used),
            total: self.limit,
        };
        Some(match self.inner.mem_info() {
            Some(m) => MemInfo {
                free: own.free.min(m.free),
                total: own.total.min(m.total),
            },
            None => own,
        })
    }

    unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        self.take(bytes)?;
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.map(ptr, bytes) }.inspect_err(|_| self.give(bytes))
    }

    unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.unmap(ptr, bytes) };
        self.give(bytes);
    }
}

/// Injects failures into the calls that obtain memory (allocate, map).
pub struct FaultInjectingBackend<B> {
    inner: B,
    calls: AtomicU64,
    /// Fail the call with this number (counted from 1); 0 = none.
    fail_at: AtomicU64,
    /// Fail the next this many calls.
    fail_next: AtomicU64,
    /// Fail with `Other` instead of `OutOfMemory`.
    other: AtomicU64,
}

impl<B: DeviceBackend> FaultInjectingBackend<B> {
    /// Wraps `inner`, injecting nothing until told.
    pub fn new(inner: B) -> Self {
        FaultInjectingBackend {
            inner,
            calls: AtomicU64::new(0),
            fail_at: AtomicU64::new(0),
            fail_next: AtomicU64::new(0),
            other: AtomicU64::new(0),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Fails the next `n` calls that obtain memory with out of memory.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::Relaxed);
    }

    /// Injected out-of-memory failures still armed (`fail_next` calls not yet
    /// failed, plus 1 while a `fail_nth` target is ahead).
    pub fn armed(&self) -> u64 {
        let at = self.fail_at.load(Ordering::Relaxed);
        let ahead = u64::from(at > self.calls.load(Ordering::Relaxed));
        self.fail_next.load(Ordering::Relaxed) + ahead
    }

    /// Fails the `n`-th call that obtains memory from now (1 = the next).
    pub fn fail_nth(&self, n: u64) {
        let now = self.calls.load(Ordering::Relaxed);
        self.fail_at.store(now + n.max(1), Ordering::Relaxed);
    }

    /// Fails the next `n` calls with a non-memory error.
    pub fn fail_next_other(&self, n: u64) {
        self.other.store(n, Ordering::Relaxed);
    }

    /// Calls that obtained (or tried to obtain) memory so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn check(&self) -> Result<(), BackendError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let dec = |a: &AtomicU64| {
            a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok()
        };
        if dec(&self.other) {
            return Err(BackendError::Other("injected failure".into()));
        }
        if dec(&self.fail_next)
            || self
                .fail_at
                .compare_exchange(n, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Err(BackendError::OutOfMemory);
        }
        Ok(())
    }
}

// SAFETY: every region comes from `inner`; the adaptor only refuses some
// requests.
unsafe impl<B: DeviceBackend> DeviceBackend for FaultInjectingBackend<B> {
    forward_common!();

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        self.check()?;
        self.inner.allocate(bytes)
    }

    unsafe fn deallocate(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.deallocate(ptr, bytes) }
    }

    fn mem_info(&self) -> Option<MemInfo> {
        self.inner.mem_info()
    }

    unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        self.check()?;
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.map(ptr, bytes) }
    }

    unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.unmap(ptr, bytes) }
    }
}

/// One backend call seen by [`LoggingBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendCall {
    /// `allocate(bytes)` and its result address (None on failure).
    Allocate(usize, Option<usize>),
    /// `deallocate(ptr, bytes)`.
    Deallocate(usize, usize),
    /// `map(ptr, bytes)` and whether it succeeded.
    Map(usize, usize, bool),
    /// `unmap(ptr, bytes)`.
    Unmap(usize, usize),
}

/// Records every memory call (the last `capacity` of them).
pub struct LoggingBackend<B> {
    inner: B,
    capacity: usize,
    log: Mutex<std::collections::VecDeque<BackendCall>>,
}

impl<B: DeviceBackend> LoggingBackend<B> {
    /// Wraps `inner`, keeping the last `capacity` calls.
    pub fn new(inner: B, capacity: usize) -> Self {
        LoggingBackend {
            inner,
            capacity,
            log: Mutex::new(Default::default()),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The calls recorded, oldest first.
    pub fn calls(&self) -> Vec<BackendCall> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn push(&self, c: BackendCall) {
        if self.capacity == 0 {
            return;
        }
        let mut l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == self.capacity {
            l.pop_front();
        }
        l.push_back(c);
    }
}

// SAFETY: every call is forwarded unchanged to `inner`.
unsafe impl<B: DeviceBackend> DeviceBackend for LoggingBackend<B> {
    forward_common!();

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        let r = self.inner.allocate(bytes);
        self.push(BackendCall::Allocate(bytes, r.as_ref().ok().map(|p| p.0)));
        r
    }

    unsafe fn deallocate(&self, ptr: DevicePtr, bytes: usize) {
        self.push(BackendCall::Deallocate(ptr.0, bytes));
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.deallocate(ptr, bytes) }
    }

    fn mem_info(&self) -> Option<MemInfo> {
        self.inner.mem_info()
    }

    unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        // SAFETY: forwarded with the caller's guarantee.
        let r = unsafe { self.inner.map(ptr, bytes) };
        self.push(BackendCall::Map(ptr.0, bytes, r.is_ok()));
        r
    }

    unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) {
        self.push(BackendCall::Unmap(ptr.0, bytes));
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.unmap(ptr, bytes) }
    }
}
