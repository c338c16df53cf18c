//! A free's events are recorded, and spent events dropped, with the engine
//! lock released (`alloc_core::CoreInvariant::P1`, the "being recorded"
//! state).
//!
//! On CUDA, recording an event is a driver call (`cuEventRecord`, and 32
//! `cuEventCreate` when the event pool runs dry), and dropping a pooled
//! event takes the pool's lock: under the engine lock, each stalls every
//! other thread's allocation. The probe backend here wraps the sim and asks
//! the engine, from inside each `record_event` and each event's drop,
//! whether its lock is held (the test is single-threaded, so a held lock is
//! this thread's). The hooks also act while a free's events are being
//! recorded (validate, snapshot, a device-wide sync, an allocation that
//! would reuse the block), which no single-threaded program could otherwise
//! reach: the block must stay pending until its events complete (or a sync
//! that started after its free), never be reused early, never be lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use alloc_core::backend::{BackendError, DeviceBackend, DevicePtr, MemInfo, SyncCoverage};
use alloc_core::backends::SimEvent;
use alloc_core::{BlockState, CachingAllocator, Config, SimBackend, SimStream};

const MIB: usize = 1 << 20;

type Engine = CachingAllocator<Probe>;

/// What to do inside the next `record_event` (once).
type Action = Box<dyn FnOnce(&Engine) + Send>;

/// What the probe saw.
#[derive(Default)]
struct Seen {
    records: AtomicU64,
    records_locked: AtomicU64,
    queries: AtomicU64,
    queries_locked: AtomicU64,
    drops: AtomicU64,
    drops_locked: AtomicU64,
}

struct Shared {
    engine: OnceLock<Weak<Engine>>,
    seen: Seen,
    during_record: Mutex<Option<Action>>,
    during_query: Mutex<Option<Action>>,
}

impl Shared {
    fn locked(&self) -> bool {
        self.engine
            .get()
            .and_then(Weak::upgrade)
            .is_some_and(|e| e.lock_held())
    }
}

/// The sim, asking the engine whether its lock is held at each event call.
#[derive(Clone)]
struct Probe {
    sim: SimBackend,
    shared: Arc<Shared>,
}

/// A sim event that checks, when dropped, whether the engine lock is held.
struct ProbeEvent {
    inner: SimEvent,
    shared: Arc<Shared>,
}

impl Drop for ProbeEvent {
    fn drop(&mut self) {
        self.shared.seen.drops.fetch_add(1, Ordering::SeqCst);
        if self.shared.locked() {
            self.shared.seen.drops_locked.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// SAFETY: every memory and sync call is the sim's, unchanged; events are
// the sim's events, so `event_done` answers as the sim does.
unsafe impl DeviceBackend for Probe {
    type Stream = SimStream;
    type Event = ProbeEvent;

    fn name(&self) -> &str {
        "probe"
    }
    fn stream_for_id(&self, id: u32) -> SimStream {
        SimStream(id)
    }
    fn allocate(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        self.sim.allocate(bytes)
    }
    unsafe fn deallocate(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: forwarded with the engine's guarantee.
        unsafe { self.sim.deallocate(ptr, bytes) }
    }
    fn record_event(&self, stream: SimStream) -> Result<ProbeEvent, BackendError> {
        let seen = &self.shared.seen;
        seen.records.fetch_add(1, Ordering::SeqCst);
        if self.shared.locked() {
            seen.records_locked.fetch_add(1, Ordering::SeqCst);
        } else {
            // taken first: the hook's own threads may record events too
            let act = self.shared.during_record.lock().unwrap().take();
            if let Some(act) = act
                && let Some(e) = self.shared.engine.get().and_then(Weak::upgrade)
            {
                act(&e);
            }
        }
        Ok(ProbeEvent {
            inner: self.sim.record_event(stream)?,
            shared: Arc::clone(&self.shared),
        })
    }
    fn event_done(&self, event: &ProbeEvent) -> bool {
        self.shared.seen.queries.fetch_add(1, Ordering::SeqCst);
        if self.shared.locked() {
            self.shared
                .seen
                .queries_locked
                .fetch_add(1, Ordering::SeqCst);
        } else {
            let act = self.shared.during_query.lock().unwrap().take();
            if let Some(act) = act
                && let Some(e) = self.shared.engine.get().and_then(Weak::upgrade)
            {
                act(&e);
            }
        }
        self.sim.event_done(&event.inner)
    }
    fn wait_event(&self, event: &ProbeEvent) {
        self.sim.wait_event(&event.inner)
    }
    fn synchronize(&self) -> SyncCoverage {
        self.sim.synchronize()
    }
    fn mem_info(&self) -> Option<MemInfo> {
        self.sim.mem_info()
    }
    fn page_size(&self) -> Option<usize> {
        self.sim.page_size()
    }
    fn reserve(&self, bytes: usize) -> Result<DevicePtr, BackendError> {
        self.sim.reserve(bytes)
    }
    unsafe fn map(&self, ptr: DevicePtr, bytes: usize) -> Result<(), BackendError> {
        // SAFETY: forwarded with the engine's guarantee.
        unsafe { self.sim.map(ptr, bytes) }
    }
    unsafe fn unmap(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: forwarded with the engine's guarantee.
        unsafe { self.sim.unmap(ptr, bytes) }
    }
    unsafe fn release(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: forwarded with the engine's guarantee.
        unsafe { self.sim.release(ptr, bytes) }
    }
}

/// An engine over a probed 1 GiB sim whose work completes only when told.
fn engine() -> (Arc<Engine>, SimBackend, Arc<Shared>) {
    let sim = SimBackend::new(1 << 30);
    sim.set_auto_complete(false);
    let shared = Arc::new(Shared {
        engine: OnceLock::new(),
        seen: Seen::default(),
        during_record: Mutex::new(None),
        during_query: Mutex::new(None),
    });
    let probe = Probe {
        sim: sim.clone(),
        shared: Arc::clone(&shared),
    };
    let e = Arc::new(CachingAllocator::new(probe, Config::default()));
    let _ = shared.engine.set(Arc::downgrade(&e));
    (e, sim, shared)
}

/// A 1 MiB buffer allocated on `own`, used on `other` (`record_stream`) by
/// work launched there that has not completed: its free must wait for
/// `other`'s event.
fn busy_on<'a>(
    e: &'a Engine,
    sim: &SimBackend,
    own: SimStream,
    other: SimStream,
) -> alloc_core::DeviceBuffer<'a, Probe> {
    let b = e.allocate(MIB, own).unwrap();
    b.record_stream(other);
    sim.launch_using(other, &[(b.ptr().0, b.capacity())]);
    b
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::SeqCst)
}

fn check(e: &Engine, sim: &SimBackend) {
    if let Err(v) = e.validate() {
        panic!("{v}");
    }
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

/// States of the blocks of the snapshot at `ptr`.
fn state_at(e: &Engine, ptr: usize) -> Option<BlockState> {
    e.snapshot()
        .segments
        .iter()
        .flat_map(|s| s.blocks.iter())
        .find(|b| b.address == ptr)
        .map(|b| b.state)
}

#[test]
fn a_free_records_its_events_with_the_lock_released() {
    let (e, sim, shared) = engine();
    let (s0, s1, s2) = (SimStream(0), SimStream(1), SimStream(2));
    let b = e.allocate(MIB, s0).unwrap();
    b.record_stream(s1);
    b.record_stream(s2);
    sim.launch_using(s1, &[(b.ptr().0, b.capacity())]);
    sim.launch_using(s2, &[(b.ptr().0, b.capacity())]);
    drop(b);
    let seen = &shared.seen;
    assert_eq!(n(&seen.records), 2, "one event per stream that used it");
    assert_eq!(
        n(&seen.records_locked),
        0,
        "cuEventRecord (and cuEventCreate) called under the engine lock"
    );
    check(&e, &sim);
}

#[test]
fn spent_events_are_dropped_with_the_lock_released() {
    let (e, sim, shared) = engine();
    let (s0, s1) = (SimStream(0), SimStream(1));
    for _ in 0..4 {
        let b = busy_on(&e, &sim, s0, s1);
        drop(b);
        sim.complete(s1);
        // processes the pending free: its event is spent
        drop(e.allocate(MIB, s0).unwrap());
    }
    // the ones `trim` finds completed
    let b = busy_on(&e, &sim, s0, s1);
    drop(b);
    sim.complete(s1);
    e.trim();
    // and the ones a device-wide sync makes spent
    let b = busy_on(&e, &sim, s0, s1);
    drop(b);
    e.empty_cache();
    let seen = &shared.seen;
    // 6 frees' events, and the probes of the idle checks
    assert!(n(&seen.records) >= 6);
    assert_eq!(
        n(&seen.drops),
        n(&seen.records),
        "every event recorded was dropped"
    );
    assert_eq!(n(&seen.drops_locked), 0, "an event dropped under the lock");
    check(&e, &sim);
}

/// While a free's events are being recorded, the block is pending: checked,
/// seen and kept as such; an allocation of its size gets other memory.
#[test]
fn a_block_being_recorded_is_pending_and_not_reused() {
    let (e, sim, shared) = engine();
    let (s0, s1) = (SimStream(0), SimStream(1));
    let b = busy_on(&e, &sim, s0, s1);
    let ptr = b.ptr().0;
    // (the block's state, the other block's address, validate passed)
    type Observed = Option<(Option<BlockState>, usize, bool)>;
    let got: Arc<Mutex<Observed>> = Arc::default();
    let got2 = Arc::clone(&got);
    let sim2 = sim.clone();
    *shared.during_record.lock().unwrap() = Some(Box::new(move |e: &Engine| {
        let valid = e.validate();
        let state = state_at(e, ptr);
        let other = e.allocate(MIB, s0).unwrap();
        sim2.check_handout(s0, other.ptr(), other.capacity());
        *got2.lock().unwrap() = Some((state, other.ptr().0, valid.is_ok()));
        if let Err(v) = valid {
            panic!("{v}");
        }
    }));
    drop(b);
    let (state, other, valid) = got.lock().unwrap().take().expect("the hook ran");
    assert!(valid);
    assert_eq!(state, Some(BlockState::Pending), "while being recorded");
    assert_ne!(other, ptr, "a block being recorded was handed out");
    assert_eq!(state_at(&e, ptr), Some(BlockState::Pending));
    check(&e, &sim);
    sim.complete(s1);
    drop(e.allocate(MIB, SimStream(0)).unwrap());
    assert_ne!(state_at(&e, ptr), Some(BlockState::Pending));
    check(&e, &sim);
}

/// A device-wide sync that starts while a free's events are being recorded
/// (after the free took its tick) covers the block: the free completes then,
/// and the events recorded afterwards are spent, not queued for a block
/// that may already be someone else's.
#[test]
fn a_sync_during_the_recording_completes_the_free() {
    let (e, sim, shared) = engine();
    let (s0, s1) = (SimStream(0), SimStream(1));
    let b = busy_on(&e, &sim, s0, s1);
    let reused: Arc<Mutex<Option<usize>>> = Arc::default();
    let reused2 = Arc::clone(&reused);
    let sim2 = sim.clone();
    *shared.during_record.lock().unwrap() = Some(Box::new(move |e: &Engine| {
        e.empty_cache();
        // the block is free and idle: it may be handed out at once
        let again = e.allocate(MIB, s0).unwrap();
        sim2.check_handout(s0, again.ptr(), again.capacity());
        *reused2.lock().unwrap() = Some(again.ptr().0);
        std::mem::forget(again);
    }));
    drop(b);
    assert!(reused.lock().unwrap().is_some(), "the hook ran");
    let seen = &shared.seen;
    assert_eq!(n(&seen.drops), n(&seen.records), "spent events dropped");
    let st = e.stats();
    assert_eq!(
        st.active.all.current, 1,
        "the block handed out again is the one active block"
    );
    check(&e, &sim);
}

/// `forget_stream` does not return while a free still records an event on
/// the stream (the program may destroy the stream once it returns).
#[test]
fn forget_stream_waits_for_a_free_recording_on_it() {
    let (e, sim, shared) = engine();
    let (s0, s1) = (SimStream(0), SimStream(1));
    let b = busy_on(&e, &sim, s0, s1);
    sim.complete(s1); // so that forgetting s1 does not wait for its work
    let returned_early = Arc::new(AtomicU64::new(u64::MAX));
    let r2 = Arc::clone(&returned_early);
    let shared2 = Arc::clone(&shared);
    *shared.during_record.lock().unwrap() = Some(Box::new(move |_: &Engine| {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done2 = Arc::clone(&done);
        let e2 = shared2.engine.get().and_then(Weak::upgrade).unwrap();
        let h = std::thread::spawn(move || {
            e2.forget_stream(SimStream(1));
            done2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        r2.store(u64::from(done.load(Ordering::SeqCst)), Ordering::SeqCst);
        // the forget finishes once this recording has been queued
        std::mem::forget(h);
    }));
    drop(b);
    assert_eq!(
        returned_early.load(Ordering::SeqCst),
        0,
        "forget_stream returned while a free was recording on the stream"
    );
    // it returns now
    let t = std::time::Instant::now();
    while e.stream_count() > 1 {
        assert!(t.elapsed().as_secs() < 10, "forget_stream never returned");
        std::thread::yield_now();
    }
    check(&e, &sim);
}

/// Events are queued in the order their recordings finish, not in their
/// frees' tick order: a free (A) that took its tick before a device-wide
/// sync's mark may queue its event behind one (B) whose free came after
/// the mark. The sync must complete A (and drop its queued event) and
/// leave B waiting: no event may stay queued for a free already completed.
#[test]
fn a_sync_completes_a_free_queued_behind_a_later_one() {
    use std::sync::mpsc;
    let (e, sim, shared) = engine();
    let (s0, s1) = (SimStream(0), SimStream(1));
    let a = e.allocate(MIB, s0).unwrap();
    a.record_stream(s1);
    sim.launch_using(s1, &[(a.ptr().0, a.capacity())]);
    // the sync of `empty_cache` (on another thread) parks until `go`
    let (in_sync_tx, in_sync_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let parked = Mutex::new(Some((in_sync_tx, go_rx)));
    sim.on_synchronize(move || {
        if let Some((tx, rx)) = parked.lock().unwrap().take() {
            let _ = tx.send(());
            let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
        }
    });
    let shared2 = Arc::clone(&shared);
    let sim2 = sim.clone();
    let syncer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let syncer2 = Arc::clone(&syncer);
    // while A's event is being recorded: the sync takes its mark (after
    // A's tick) and parks; B is freed (its tick after the mark) and queued
    *shared.during_record.lock().unwrap() = Some(Box::new(move |e: &Engine| {
        let e2 = shared2.engine.get().and_then(Weak::upgrade).unwrap();
        *syncer2.lock().unwrap() = Some(std::thread::spawn(move || e2.empty_cache()));
        in_sync_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the sync started");
        let b = busy_on(e, &sim2, s0, s1);
        drop(b);
    }));
    drop(a); // A's event queued behind B's
    go_tx.send(()).unwrap();
    let h = syncer.lock().unwrap().take().expect("the hook ran");
    h.join().unwrap();
    check(&e, &sim);
    let st = e.stats();
    assert_eq!(
        st.active.all.current, 1,
        "A completed by the sync, B still pending"
    );
    sim.complete(s1);
    e.trim();
    assert_eq!(e.stats().active.all.current, 0);
    check(&e, &sim);
}

/// An allocation queries pending frees' events with the lock released
/// (`cuEventQuery`), and a free whose event completed is reused.
#[test]
fn an_allocation_queries_events_with_the_lock_released() {
    let (e, sim, shared) = engine();
    let (s0, s1, s2) = (SimStream(0), SimStream(1), SimStream(2));
    let mut last = 0;
    for i in 0..6 {
        let b = e.allocate(MIB, s0).unwrap();
        if i > 1 {
            assert_eq!(b.ptr().0, last, "the completed free's block reused");
        }
        last = b.ptr().0;
        b.record_stream(s1);
        b.record_stream(s2);
        sim.launch_using(s1, &[(b.ptr().0, b.capacity())]);
        drop(b);
        // still running: the next allocation must not take the block
        let other = e.allocate(MIB, s0).unwrap();
        assert_ne!(other.ptr().0, last, "a block reused while its events run");
        sim.check_handout(s0, other.ptr(), other.capacity());
        drop(other);
        sim.complete(s1);
        check(&e, &sim);
    }
    let seen = &shared.seen;
    assert!(n(&seen.queries) >= 6, "the events were queried");
    assert_eq!(
        n(&seen.queries_locked),
        0,
        "cuEventQuery called under the engine lock"
    );
    check(&e, &sim);
}

/// While an allocation queries a pending free's event with the lock
/// released, the free is still pending (validate counts the event as being
/// queried), and a device-wide sync may complete it and another allocation
/// reuse the block: the queried event is then spent, not given back.
#[test]
fn a_sync_while_an_event_is_queried_completes_the_free() {
    let (e, sim, shared) = engine();
    let (s0, s1) = (SimStream(0), SimStream(1));
    let b = busy_on(&e, &sim, s0, s1);
    let ptr = b.ptr().0;
    drop(b);
    type Observed = Option<(Option<BlockState>, Option<BlockState>)>;
    let got: Arc<Mutex<Observed>> = Arc::default();
    let got2 = Arc::clone(&got);
    let sim2 = sim.clone();
    *shared.during_query.lock().unwrap() = Some(Box::new(move |e: &Engine| {
        if let Err(v) = e.validate() {
            panic!("while queried: {v}");
        }
        let state = state_at(e, ptr);
        e.empty_cache();
        let after = state_at(e, ptr);
        let again = e.allocate(MIB, s0).unwrap();
        sim2.check_handout(s0, again.ptr(), again.capacity());
        *got2.lock().unwrap() = Some((state, after));
        std::mem::forget(again);
    }));
    // this allocation queries the event (not completed: s1 still runs)
    let c = e.allocate(MIB, s0).unwrap();
    let (state, after) = got.lock().unwrap().take().expect("the hook ran");
    assert_eq!(state, Some(BlockState::Pending), "while queried");
    assert_ne!(
        after,
        Some(BlockState::Pending),
        "the sync completed the free (and released it)"
    );
    sim.check_handout(s0, c.ptr(), c.capacity());
    check(&e, &sim);
    let seen = &shared.seen;
    drop(c);
    assert_eq!(n(&seen.drops), n(&seen.records), "spent events dropped");
    check(&e, &sim);
}
