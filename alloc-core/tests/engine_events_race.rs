//! Frees whose events are recorded with the engine lock released, raced
//! against everything that looks at pending frees (`alloc_core::CoreInvariant::P1`).
//!
//! Worker threads run the pinned pool's pattern: a buffer allocated on the
//! worker's own stream, used by work on a second stream (`record_stream`
//! and simulated work that stays in flight until a completer thread
//! finishes it), then dropped, so that every free records an event. The sim
//! gives each event call a cost (a spin of `EVENT_COST_NS`), so a free's
//! recording window is wide and the other threads act inside it:
//! - a maintenance thread calls `empty_cache` (a device-wide sync), `trim`,
//!   `validate` and `stats`;
//! - the device is small, so allocations run the reclaim ladder and its
//!   sync;
//! - each worker also uses a stream of its own on the side, which a
//!   forgetter thread forgets as soon as the worker has launched its last
//!   work there, while the worker drops the buffers recorded on it;
//! - the workers allocate on the streams their frees record on.
//!
//! The independent checks: the sim's in-flight oracle (no block handed to
//! another stream's user, unmapped or released while work launched on it
//! may still run: every buffer obtained is checked); every invariant,
//! during the run and at the end (`validate`, which checks P1's
//! equations); and at quiescence, once all work completed and every buffer
//! was dropped, no block is lost: `reserved = allocated + cached + pending`
//! with nothing allocated or pending, and `empty_cache` gives every byte
//! back to the device.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use alloc_core::{AllocError, CachingAllocator, Config, DeviceBuffer, SimBackend, SimStream};

const MIB: usize = 1 << 20;
/// The device: small enough that the ladder runs.
const CAPACITY: usize = 48 * MIB;
/// What each simulated event call costs (a stand-in for `cuEventRecord` /
/// `cuEventQuery`).
const EVENT_COST_NS: u64 = 20_000;
const WORKERS: usize = 3;
const ROUNDS: usize = 300;

type Engine = CachingAllocator<SimBackend>;
type Buffer<'a> = DeviceBuffer<'a, SimBackend>;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn own(i: usize) -> SimStream {
    SimStream(1 + i as u32)
}
/// The second stream every free of worker `i` records on.
fn user(i: usize) -> SimStream {
    SimStream(20 + i as u32)
}
/// The side stream of worker `i`, forgotten every round.
fn side(i: usize) -> SimStream {
    SimStream(40 + i as u32)
}

/// Forget protocol per worker: the worker launched its last work on its
/// side stream (`READY`), the forgetter forgot it (`DONE`).
const IDLE: u8 = 0;
const READY: u8 = 1;
const DONE: u8 = 2;

struct FailFlag<'a>(&'a AtomicBool);

impl Drop for FailFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

fn allocate<'a>(a: &'a Engine, sim: &SimBackend, bytes: usize, s: SimStream) -> Option<Buffer<'a>> {
    match a.allocate(bytes, s) {
        Ok(b) => {
            sim.check_handout(s, b.ptr(), b.capacity());
            Some(b)
        }
        Err(AllocError::OutOfMemory(_)) => None,
        Err(e) => panic!("{bytes} B on {s:?}: {e}"),
    }
}

/// A buffer used by in-flight work on `on`.
fn use_on(sim: &SimBackend, b: &Buffer<'_>, on: SimStream) {
    b.record_stream(on);
    sim.launch_using(on, &[(b.ptr().0, b.capacity())]);
}

fn worker(a: &Engine, sim: &SimBackend, me: usize, flag: &AtomicU8, failed: &AtomicBool) {
    let _f = FailFlag(failed);
    let mut rng = Rng::new(0x5EED + me as u64);
    const SIZES: [usize; 4] = [4096, 64 << 10, MIB, 3 * MIB];
    for _ in 0..ROUNDS {
        if failed.load(Ordering::Relaxed) {
            return;
        }
        // the pinned pool's pattern: every free records an event
        let mut held = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let bytes = SIZES[rng.below(SIZES.len())];
            // on the worker's stream, or on the stream its frees record on
            let s = if rng.below(4) == 0 { user(me) } else { own(me) };
            if let Some(b) = allocate(a, sim, bytes, s) {
                sim.launch_using(s, &[(b.ptr().0, b.capacity())]);
                let on = if s == own(me) { user(me) } else { own(me) };
                use_on(sim, &b, on);
                held.push(b);
            }
        }
        // buffers used on the side stream, then the side stream forgotten
        // while they are dropped
        let mut side_held = Vec::new();
        for _ in 0..rng.below(3) {
            if let Some(b) = allocate(a, sim, SIZES[rng.below(2)], own(me)) {
                use_on(sim, &b, side(me));
                side_held.push(b);
            }
        }
        flag.store(READY, Ordering::SeqCst);
        drop(side_held);
        while held.len() > 1 {
            drop(held.swap_remove(rng.below(held.len())));
        }
        drop(held);
        while flag.load(Ordering::SeqCst) != DONE && !failed.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        flag.store(IDLE, Ordering::SeqCst);
    }
}

#[test]
fn frees_recording_events_race_syncs_forgets_and_reuse() {
    let sim = SimBackend::new(CAPACITY);
    sim.set_auto_complete(false);
    sim.set_event_cost_ns(EVENT_COST_NS);
    let a = Engine::new(sim.clone(), Config::default());
    let failed = AtomicBool::new(false);
    let running = AtomicUsize::new(WORKERS);
    let flags: Vec<AtomicU8> = (0..WORKERS).map(|_| AtomicU8::new(IDLE)).collect();
    let (syncs_before, mut forgets) = (sim.syncs(), 0usize);
    std::thread::scope(|sc| {
        for (me, flag) in flags.iter().enumerate() {
            let (a, sim, failed, running) = (&a, &sim, &failed, &running);
            sc.spawn(move || {
                worker(a, sim, me, flag, failed);
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // completes work now and then, on every stream
        sc.spawn(|| {
            let _f = FailFlag(&failed);
            let mut rng = Rng::new(7);
            while running.load(Ordering::SeqCst) > 0 && !failed.load(Ordering::Relaxed) {
                let i = rng.below(WORKERS);
                let s = [own(i), user(i), side(i)][rng.below(3)];
                sim.complete(s);
                std::thread::yield_now();
            }
        });
        // maintenance
        sc.spawn(|| {
            let _f = FailFlag(&failed);
            let mut rng = Rng::new(11);
            while running.load(Ordering::SeqCst) > 0 && !failed.load(Ordering::Relaxed) {
                match rng.below(10) {
                    0..3 => a.empty_cache(),
                    3..5 => a.trim(),
                    5..8 => {
                        if let Err(v) = a.validate() {
                            panic!("validate during the run: {v}");
                        }
                    }
                    _ => {
                        let s = a.stats();
                        let (al, ac, re) = (
                            s.allocated_bytes.all.current,
                            s.active_bytes.all.current,
                            s.reserved_bytes.all.current,
                        );
                        assert!(
                            0 <= al && al <= ac && ac <= re && re as usize <= CAPACITY,
                            "allocated {al}, active {ac}, reserved {re}"
                        );
                    }
                }
                std::thread::yield_now();
            }
        });
        // forgetter: this thread
        let _f = FailFlag(&failed);
        while running.load(Ordering::SeqCst) > 0 && !failed.load(Ordering::Relaxed) {
            for (i, f) in flags.iter().enumerate() {
                if f.load(Ordering::SeqCst) == READY {
                    a.forget_stream(side(i));
                    forgets += 1;
                    f.store(DONE, Ordering::SeqCst);
                }
            }
            std::thread::yield_now();
        }
    });
    assert!(!failed.load(Ordering::SeqCst), "a thread failed");
    assert!(forgets > 0 && sim.syncs() > syncs_before, "the races ran");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    // quiescence: all work completed, every buffer dropped
    sim.complete_all();
    a.trim();
    if let Err(v) = a.validate() {
        panic!("at the end: {v}");
    }
    // reserved = allocated + cached + pending, with pending = active −
    // allocated: nothing allocated, nothing pending, the rest cached
    let s = a.stats();
    assert_eq!(s.allocated_bytes.all.current, 0, "nothing allocated");
    assert_eq!(s.active_bytes.all.current, 0, "nothing pending");
    a.empty_cache();
    let s = a.stats();
    assert_eq!(s.reserved_bytes.all.current, 0, "no block lost");
    assert_eq!(sim.used(), 0, "every byte back to the device");
    assert_eq!(sim.live_regions(), 0);
}
