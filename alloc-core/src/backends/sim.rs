//! [`SimBackend`]: a deterministic simulated device of fixed capacity. Fake
//! addresses, no memory touched; fault injection (fail the n-th allocation,
//! report a given free/total); events that complete under test control. It
//! also checks the engine's side of the backend contract (double frees,
//! unmapping unmapped pages) and records every breach.
//!
//! # The in-flight oracle
//! [`SimBackend::launch_using`] launches work on a stream that uses named
//! address ranges. Until that stream's work completes, those ranges are *in
//! flight*: handing one out to another stream's user
//! ([`SimBackend::check_handout`]), unmapping it, deallocating or releasing
//! the memory under it is a use-after-free on a real device, and the sim
//! panics with the range and the stream (it is a test backend: failing loudly
//! is its job).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{BackendError, DeviceBackend, DevicePtr, MemInfo, SyncCoverage};

/// A simulated stream, named by a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SimStream(pub u32);

/// An event on a simulated stream: completes when the work launched on the
/// stream before it was recorded completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimEvent {
    stream: u32,
    seq: u64,
}

/// Where the fake address space starts (never 0, so a null is always a bug).
const BASE_ADDR: usize = 0x7000_0000_0000;

#[derive(Default)]
struct SimState {
    next_addr: usize,
    /// Bytes of segments and mapped pages.
    used: usize,
    segments: BTreeMap<usize, usize>,
    /// Reservation base → (size, indices of its mapped pages).
    reservations: BTreeMap<usize, (usize, BTreeSet<usize>)>,
    /// Calls that obtain memory (allocate + map), counted from 1.
    obtain_calls: u64,
    fail_at: Vec<u64>,
    mem_info: Option<MemInfo>,
    /// Per stream: (work launched, work completed), counted in launches.
    streams: BTreeMap<u32, (u64, u64)>,
    auto_complete: bool,
    syncs: u64,
    /// Streams a device-wide sync does not wait for (a capturing stream,
    /// another thread's per-thread stream, a stream the backend lost track
    /// of): `synchronize` leaves their work running and says so.
    sync_skips: BTreeSet<u32>,
    violations: Vec<String>,
    /// Ranges launched work may still use: (stream, launch number, start, end).
    inflight: Vec<InFlight>,
    /// Successful allocate + map calls, and deallocate + unmap calls.
    driver_calls: (u64, u64),
}

/// A range that work launched on `stream` (its `seq`-th launch) may use.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    stream: u32,
    seq: u64,
    start: usize,
    end: usize,
}

impl SimState {
    /// Drops the ranges whose work completed.
    fn prune(&mut self) {
        let streams = &self.streams;
        self.inflight.retain(|r| {
            streams
                .get(&r.stream)
                .is_some_and(|&(_, done)| done < r.seq)
        });
    }

    /// The first in-flight range overlapping `[start, end)` whose stream
    /// `skip` does not exempt.
    fn busy_overlap(&mut self, start: usize, end: usize, skip: Option<u32>) -> Option<InFlight> {
        self.prune();
        self.inflight
            .iter()
            .find(|r| Some(r.stream) != skip && r.start < end && start < r.end)
            .copied()
    }

    /// Panics when `[start, start + bytes)` is in flight on any stream.
    fn assert_idle(&mut self, what: &str, start: usize, bytes: usize) {
        if let Some(r) = self.busy_overlap(start, start.saturating_add(bytes), None) {
            panic!(
                "sim oracle: {what}({start:#x}, {bytes}) while work launched on stream {} may still use [{:#x}, {:#x})",
                r.stream, r.start, r.end
            );
        }
    }
}

/// A callback run by [`SimBackend::on_synchronize`].
type SyncHook = Arc<dyn Fn() + Send + Sync>;

struct SimInner {
    capacity: usize,
    page: Option<usize>,
    state: Mutex<SimState>,
    /// Run after each device-wide sync, outside the sim's lock.
    sync_hook: Mutex<Option<SyncHook>>,
    /// Nanoseconds each `record_event` and `event_done` spins, outside the
    /// sim's lock (0: none), to stand for a driver's `cuEventRecord` and
    /// `cuEventQuery`.
    event_cost_ns: AtomicU64,
    /// Nanoseconds each `record_event` and `event_done` sleeps (0: none),
    /// to stand for a driver call that blocks.
    event_sleep_ns: AtomicU64,
}

/// A simulated device. Clones share one device, so a test can keep a clone to
/// control it while the engine owns another.
#[derive(Clone)]
pub struct SimBackend {
    inner: Arc<SimInner>,
}

impl SimBackend {
    /// A device of `capacity` bytes with 2 MiB pages (expandable segments on)
    /// whose events complete at once.
    pub fn new(capacity: usize) -> Self {
        Self::build(capacity, Some(2 << 20))
    }

    /// A device of `capacity` bytes without the virtual-memory capability.
    pub fn without_vm(capacity: usize) -> Self {
        Self::build(capacity, None)
    }

    fn build(capacity: usize, page: Option<usize>) -> Self {
        let state = SimState {
            next_addr: BASE_ADDR,
            auto_complete: true,
            ..SimState::default()
        };
        SimBackend {
            inner: Arc::new(SimInner {
                capacity,
                page,
                state: Mutex::new(state),
                sync_hook: Mutex::new(None),
                event_cost_ns: AtomicU64::new(0),
                event_sleep_ns: AtomicU64::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the `n`-th call that obtains memory from now (1 = the next one)
    /// fail with out of memory.
    pub fn fail_nth_allocation(&self, n: u64) {
        let mut s = self.lock();
        let at = s.obtain_calls + n.max(1);
        s.fail_at.push(at);
    }

    /// Reports `info` from `mem_info` instead of the simulated figures.
    pub fn set_mem_info(&self, info: Option<MemInfo>) {
        self.lock().mem_info = info;
    }

    /// Runs `hook` after every device-wide sync (while the engine's
    /// `synchronize` call is still in progress, outside the sim's lock): a
    /// test's way to act "during" a sync, say from another thread, to check
    /// that the engine does not hold its lock across the sync and trusts it
    /// only for what it covers.
    pub fn on_synchronize(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self
            .inner
            .sync_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hook));
    }

    /// Makes every `record_event` and `event_done` spin for `ns`
    /// nanoseconds (outside the sim's lock) before it answers, to stand for
    /// the cost of a driver's `cuEventRecord` / `cuEventQuery` (a few
    /// microseconds on CUDA); 0 (the default) costs nothing.
    pub fn set_event_cost_ns(&self, ns: u64) {
        self.inner.event_cost_ns.store(ns, Ordering::Relaxed);
    }

    /// Makes every `record_event` and `event_done` sleep for `ns`
    /// nanoseconds (outside the sim's lock, giving up the CPU), to stand for
    /// a driver call that blocks (a batch of `cuEventCreate`, a record on a
    /// full launch queue); 0 (the default) costs nothing.
    pub fn set_event_sleep_ns(&self, ns: u64) {
        self.inner.event_sleep_ns.store(ns, Ordering::Relaxed);
    }

    /// The simulated cost of an event call.
    #[inline]
    fn event_cost(&self) {
        let sleep = self.inner.event_sleep_ns.load(Ordering::Relaxed);
        if sleep != 0 {
            std::thread::sleep(std::time::Duration::from_nanos(sleep));
        }
        let ns = self.inner.event_cost_ns.load(Ordering::Relaxed);
        if ns != 0 {
            let start = std::time::Instant::now();
            while start.elapsed().as_nanos() < u128::from(ns) {
                std::hint::spin_loop();
            }
        }
    }

    /// When on (the default), work completes as soon as it is launched; when
    /// off, only [`complete`](Self::complete) completes it.
    pub fn set_auto_complete(&self, on: bool) {
        self.lock().auto_complete = on;
    }

    /// Launches simulated work on `stream`: events recorded from now on
    /// complete only when this work does.
    pub fn launch(&self, stream: SimStream) {
        let mut s = self.lock();
        let auto = s.auto_complete;
        let e = s.streams.entry(stream.0).or_default();
        e.0 += 1;
        if auto {
            e.1 = e.0;
        }
    }

    /// Launches simulated work on `stream` that uses `ranges` (start, bytes):
    /// until this work completes, the ranges are in flight (see the module
    /// docs) and the sim panics if they are handed to another stream's user,
    /// unmapped or released.
    pub fn launch_using(&self, stream: SimStream, ranges: &[(usize, usize)]) {
        let mut s = self.lock();
        let auto = s.auto_complete;
        let e = s.streams.entry(stream.0).or_default();
        e.0 += 1;
        let seq = e.0;
        if auto {
            e.1 = e.0;
            return;
        }
        for &(start, bytes) in ranges.iter().filter(|r| r.1 > 0) {
            s.inflight.push(InFlight {
                stream: stream.0,
                seq,
                start,
                end: start.saturating_add(bytes),
            });
        }
    }

    /// The oracle's check of a block just handed to a user of `stream`:
    /// panics if work launched on another stream may still use any of it.
    pub fn check_handout(&self, stream: SimStream, ptr: DevicePtr, bytes: usize) {
        let mut s = self.lock();
        if let Some(r) = s.busy_overlap(ptr.0, ptr.0.saturating_add(bytes), Some(stream.0)) {
            panic!(
                "sim oracle: [{:#x}, {:#x}) handed to a user of stream {} while work launched on stream {} may still use [{:#x}, {:#x})",
                ptr.0,
                ptr.0.saturating_add(bytes),
                stream.0,
                r.stream,
                r.start,
                r.end
            );
        }
    }

    /// Makes every later device-wide sync skip `stream` (`on`) or cover it
    /// again: its work keeps running across the sync, and `synchronize`
    /// reports a partial coverage, as a real backend must when it cannot
    /// wait for a stream (one capturing a CUDA graph, say).
    pub fn skip_on_sync(&self, stream: SimStream, on: bool) {
        let mut s = self.lock();
        if on {
            s.sync_skips.insert(stream.0);
        } else {
            s.sync_skips.remove(&stream.0);
        }
    }

    /// Work launched on `stream` so far, and work of it completed.
    pub fn progress(&self, stream: SimStream) -> (u64, u64) {
        self.lock()
            .streams
            .get(&stream.0)
            .copied()
            .unwrap_or((0, 0))
    }

    /// Calls as a driver sees them: successful `allocate` + `map` calls, and
    /// `deallocate` + `unmap` calls.
    pub fn driver_calls(&self) -> (u64, u64) {
        self.lock().driver_calls
    }

    /// Whether `stream` has work launched and not completed.
    pub fn busy(&self, stream: SimStream) -> bool {
        self.lock()
            .streams
            .get(&stream.0)
            .is_some_and(|&(l, c)| c < l)
    }

    /// Completes the work launched so far on `stream`.
    pub fn complete(&self, stream: SimStream) {
        let mut s = self.lock();
        let e = s.streams.entry(stream.0).or_default();
        e.1 = e.0;
    }

    /// Completes the work of every stream.
    pub fn complete_all(&self) {
        for e in self.lock().streams.values_mut() {
            e.1 = e.0;
        }
    }

    /// Bytes of segments and mapped pages held by the engine now.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// Live segments and reservations.
    pub fn live_regions(&self) -> usize {
        let s = self.lock();
        s.segments.len() + s.reservations.len()
    }

    /// Device-wide synchronizations so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Breaches of the backend contract seen (empty when the engine is right).
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    fn obtain(&self, s: &mut SimState, bytes: usize) -> Result<(), BackendError> {
        s.obtain_calls += 1;
        let n = s.obtain_calls;
        if let Some(i) = s.fail_at.iter().position(|&a| a == n) {
            s.fail_at.swap_remove(i);
            return Err(BackendError::OutOfMemory);
        }
        match s.used.checked_add(bytes) {
            Some(u) if u <= self.inner.capacity => {
                s.used = u;
                Ok(())
            }
            _ => Err(BackendError::OutOfMemory),
        }
    }

    fn take_addr(s: &mut SimState, bytes: usize, align: usize) -> Result<usize, BackendError> {
        let start = s.next_addr.checked_next_multiple_of(align);
        let end = start.and_then(|a| a.checked_add(bytes));
        match (start, end) {
            (Some(a), Some(e)) => {
                s.next_addr = e;
                Ok(a)
            }
            _ => Err(BackendError::OutOfMemory),
        }
    }

    /// The reservation holding `[ptr, ptr + bytes)` and the page range.
    fn pages(
        &self,
        s: &SimState,
        ptr: usize,
        bytes: usize,
    ) -> Option<(usize, core::ops::Range<usize>)> {
        let page = self.inner.page?;
        let (&base, &(size, _)) = s.reservations.range(..=ptr).next_back()?;
        let end = ptr.checked_add(bytes)?;
        if end > base + size || ptr % page != 0 || bytes % page != 0 {
            return None;
        }
        Some((base, (ptr - base) / page..(end - base) / page))
    }
}

// SAFETY: addresses come from a bump pointer that never reuses a range, so a
// segment or reservation overlaps no other; `reserve` aligns to the page size;
// events complete only when the test (or auto-complete) says the stream's work
// is done, and `synchronize` completes every stream except those a test
// told it to skip, and then reports a partial coverage.
unsafe impl DeviceBackend for SimBackend {
    type Stream = SimStream;
    type Event = SimEvent;

    fn name(&self) -> &str {
        "sim"
    }

    fn stream_for_id(&self, id: u32) -> SimStream {
        SimStream(id)
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        let mut s = self.lock();
        self.obtain(&mut s, bytes)?;
        let a = match Self::take_addr(&mut s, bytes, 512) {
            Ok(a) => a,
            Err(e) => {
                s.used -= bytes;
                return Err(e);
            }
        };
        s.segments.insert(a, bytes);
        s.driver_calls.0 += 1;
        Ok(DevicePtr(a))
    }

    unsafe fn deallocate(&self, ptr: DevicePtr, bytes: usize) {
        let mut s = self.lock();
        s.assert_idle("deallocate", ptr.0, bytes);
        s.driver_calls.1 += 1;
        match s.segments.remove(&ptr.0) {
            Some(b) if b == bytes => s.used -= b,
            Some(b) => {
                s.used -= b;
                s.violations.push(format!(
                    "deallocate({:#x}, {bytes}) of a {b}-byte segment",
                    ptr.0
                ));
            }
            None => s.violations.push(format!(
                "deallocate({:#x}, {bytes}) of no live segment",
                ptr.0
            )),
        }
    }

    fn record_event(&self, stream: SimStream) -> Result<SimEvent, BackendError> {
        self.event_cost();
        let s = self.lock();
        let seq = s.streams.get(&stream.0).map_or(0, |e| e.0);
        Ok(SimEvent {
            stream: stream.0,
            seq,
        })
    }

    fn event_done(&self, event: &SimEvent) -> bool {
        self.event_cost();
        self.lock()
            .streams
            .get(&event.stream)
            .map_or(event.seq == 0, |&(_, done)| done >= event.seq)
    }

    fn wait_event(&self, event: &SimEvent) {
        let mut s = self.lock();
        let e = s.streams.entry(event.stream).or_default();
        e.1 = e.1.max(event.seq);
    }

    fn synchronize(&self) -> SyncCoverage {
        let coverage = {
            let mut s = self.lock();
            s.syncs += 1;
            let SimState {
                streams,
                sync_skips,
                ..
            } = &mut *s;
            for (id, e) in streams.iter_mut() {
                if !sync_skips.contains(id) {
                    e.1 = e.0;
                }
            }
            if sync_skips.is_empty() {
                SyncCoverage::All
            } else {
                SyncCoverage::Partial
            }
        };
        let hook = self
            .inner
            .sync_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(h) = hook {
            h();
        }
        coverage
    }

    fn mem_info(&self) -> Option<MemInfo> {
        let s = self.lock();
        Some(s.mem_info.unwrap_or(MemInfo {
            free: self.inner.capacity.saturating_sub(s.used),
            total: self.inner.capacity,
        }))
    }

    fn page_size(&self) -> Option<usize> {
        self.inner.page
    }

    fn reserve(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        let Some(page) = self.inner.page else {
            return Err(BackendError::Other("sim backend built without_vm".into()));
        };
        if bytes == 0 || bytes % page != 0 {
            return Err(BackendError::Other(format!(
                "reserve({bytes}): not a positive multiple of the {page}-byte page"
            )));
        }
        let mut s = self.lock();
        let a = Self::take_addr(&mut s, bytes, page)?;
        s.reservations.insert(a, (bytes, BTreeSet::new()));
        Ok(DevicePtr(a))
    }

    unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        let mut s = self.lock();
        let Some((base, range)) = self.pages(&s, ptr.0, bytes) else {
            s.violations.push(format!(
                "map({:#x}, {bytes}) outside any reservation or unaligned",
                ptr.0
            ));
            return Err(BackendError::Other("map outside a reservation".into()));
        };
        let already = s
            .reservations
            .get(&base)
            .is_some_and(|(_, m)| m.range(range.clone()).next().is_some());
        if already {
            s.violations
                .push(format!("map({:#x}, {bytes}) of a mapped page", ptr.0));
            return Err(BackendError::Other("page already mapped".into()));
        }
        self.obtain(&mut s, bytes)?;
        s.driver_calls.0 += 1;
        if let Some((_, m)) = s.reservations.get_mut(&base) {
            m.extend(range);
        }
        Ok(())
    }

    unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) {
        let mut s = self.lock();
        s.assert_idle("unmap", ptr.0, bytes);
        s.driver_calls.1 += 1;
        let Some((base, range)) = self.pages(&s, ptr.0, bytes) else {
            s.violations.push(format!(
                "unmap({:#x}, {bytes}) outside any reservation or unaligned",
                ptr.0
            ));
            return;
        };
        let all_mapped = s
            .reservations
            .get(&base)
            .is_some_and(|(_, m)| m.range(range.clone()).count() == range.len());
        if !all_mapped {
            s.violations
                .push(format!("unmap({:#x}, {bytes}) of an unmapped page", ptr.0));
            return;
        }
        if let Some((_, m)) = s.reservations.get_mut(&base) {
            for p in range {
                m.remove(&p);
            }
        }
        s.used -= bytes;
    }

    unsafe fn release(&self, ptr: DevicePtr, bytes: usize) {
        let mut s = self.lock();
        s.assert_idle("release", ptr.0, bytes);
        match s.reservations.remove(&ptr.0) {
            Some((size, m)) if size == bytes && m.is_empty() => {}
            Some((size, _)) => s.violations.push(format!("release({:#x}, {bytes}) of a {size}-byte reservation with pages mapped or wrong size", ptr.0)),
            None => s.violations.push(format!("release({:#x}, {bytes}) of no reservation", ptr.0)),
        }
    }
}
