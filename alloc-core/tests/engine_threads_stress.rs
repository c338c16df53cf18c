//! The engine under several threads at once, on the simulated device, with
//! work that stays in flight until a test thread completes it.
//!
//! Worker threads each run a deterministic pseudo-random program on their own
//! stream (and sometimes on a stream they share): they allocate small and
//! large blocks on a device small enough that the reclaim ladder and its
//! device-wide sync run, launch work that uses their live buffers, use
//! buffers on other workers' streams (`record_stream`), drop buffers while
//! that work still runs, and now and then complete their stream's work. One
//! more thread calls `empty_cache`, `trim`, `stats` and `validate` over and
//! over, and allocates on a stream of its own that it forgets from time to
//! time (so its slot moves to the orphan slot and is reused). Every thread
//! also allocates on a few transient streams that the maintenance thread
//! forgets at any moment, so that slots change streams while other threads
//! allocate.
//!
//! The device-wide sync runs with the engine's lock released; a hook on the
//! sim keeps each sync open a little longer, so that the other threads
//! allocate, launch and free while it runs: the engine must trust the sync
//! only for what came before it. (Without that delay the threads rarely
//! act inside the window, and a sync trusted for more than it covers goes
//! unnoticed in most runs.)
//!
//! What is checked:
//! - the sim's in-flight oracle: no block that launched work may still use is
//!   handed to another stream's user (`check_handout` on every buffer
//!   obtained), unmapped or deallocated (the sim panics; a panic in any
//!   thread fails the test with its message);
//! - no breach of the backend contract (`violations` empty);
//! - every invariant (`validate`), during the run and at the end;
//! - consistent statistics at every look: allocated ≤ active ≤ reserved ≤
//!   the device;
//! - out of memory is the only error an allocation may return;
//! - at the end, once all work completed, every buffer was dropped and the
//!   cache was emptied: nothing allocated, active, requested or reserved,
//!   and nothing left held from the device.
//!
//! The last test is the one window the random programs rarely hit, played
//! deterministically by the sync hook: a stream forgotten, and its slot
//! taken by a new stream, while that stream's own allocation waits for the
//! ladder's sync.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use alloc_core::{AllocError, CachingAllocator, Config, DeviceBuffer, SimBackend, SimStream};

const MIB: usize = 1 << 20;

type Engine = CachingAllocator<SimBackend>;
type Buffer<'a> = DeviceBuffer<'a, SimBackend>;

/// The stream every worker also allocates on.
const SHARED: SimStream = SimStream(100);
/// The stream of the maintenance thread, forgotten and reused.
const DEDICATED: SimStream = SimStream(50);
/// Streams that every thread allocates on (no work is ever launched on
/// them) and that the maintenance thread forgets at any time, also while
/// another thread's allocation on them waits for a device-wide sync: their
/// slots go to whichever new stream comes next.
const TRANSIENT: [SimStream; 3] = [SimStream(60), SimStream(61), SimStream(62)];

/// xorshift64*: a small deterministic generator, one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // never 0 (xorshift's fixed point)
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

/// The stream of worker `i`.
fn worker_stream(i: usize) -> SimStream {
    SimStream(1 + i as u32)
}

thread_local! {
    /// Whether this thread's programs mostly repeat a few sizes (set by
    /// `run`), so that the front cache's shards hit.
    static FEW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A request size: mostly small-pool sizes, then large ones up to 10 MiB,
/// sometimes up to 64 MiB; in a run with few sizes, four times in five one
/// of a few sizes.
fn pick_size(rng: &mut Rng) -> usize {
    if FEW.with(|f| f.get()) && rng.below(5) != 0 {
        const SIZES: [usize; 5] = [4096, 100 << 10, 5 * MIB / 2, 6 * MIB, 20 * MIB];
        return SIZES[rng.below(SIZES.len())];
    }
    match rng.below(100) {
        0..55 => rng.between(1, MIB - 1),
        55..88 => rng.between(MIB, 10 * MIB),
        _ => rng.between(10 * MIB, 64 * MIB),
    }
}

/// What a thread's program did.
#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    allocations: usize,
    ooms: usize,
    launches: usize,
    cross_uses: usize,
    frees: usize,
    forgets: usize,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.allocations += o.allocations;
        self.ooms += o.ooms;
        self.launches += o.launches;
        self.cross_uses += o.cross_uses;
        self.frees += o.frees;
        self.forgets += o.forgets;
    }
}

/// Sets `failed` when the thread that owns it unwinds, so that the other
/// threads stop early.
struct FailFlag<'a>(&'a AtomicBool);

impl Drop for FailFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Allocates `bytes` on `stream`; out of memory is `None` (and counted),
/// any other error fails the test. A block obtained is checked by the
/// in-flight oracle before anything uses it.
fn allocate<'a>(
    a: &'a Engine,
    sim: &SimBackend,
    bytes: usize,
    stream: SimStream,
    counts: &mut Counts,
) -> Option<Buffer<'a>> {
    match a.allocate(bytes, stream) {
        Ok(b) => {
            sim.check_handout(stream, b.ptr(), b.capacity());
            assert!(
                b.capacity() >= bytes,
                "{bytes} B on {stream:?} got a {}-byte block",
                b.capacity()
            );
            counts.allocations += 1;
            Some(b)
        }
        Err(AllocError::OutOfMemory(_)) => {
            counts.ooms += 1;
            None
        }
        Err(e) => panic!("{bytes} B on {stream:?}: an error other than out of memory: {e}"),
    }
}

/// Launches work on `stream` that uses every buffer of `live` allocated on
/// it.
fn launch_on(sim: &SimBackend, stream: SimStream, live: &[Buffer<'_>], counts: &mut Counts) {
    let ranges: Vec<(usize, usize)> = live
        .iter()
        .filter(|b| b.stream() == stream)
        .map(|b| (b.ptr().0, b.capacity()))
        .collect();
    sim.launch_using(stream, &ranges);
    counts.launches += 1;
}

/// The statistics as one lock sees them must be consistent.
fn check_stats(a: &Engine, capacity: usize) {
    let s = a.stats();
    let (alloc, active, reserved, requested) = (
        s.allocated_bytes.all.current,
        s.active_bytes.all.current,
        s.reserved_bytes.all.current,
        s.requested_bytes.all.current,
    );
    assert!(
        0 <= requested && requested <= active,
        "requested {requested} B, active {active} B"
    );
    assert!(
        0 <= alloc && alloc <= active && active <= reserved && reserved as usize <= capacity,
        "allocated {alloc} B, active {active} B, reserved {reserved} B on a {capacity}-byte device"
    );
}

/// Live buffers one worker may hold.
const MAX_LIVE: usize = 8;

/// One worker: `ops` steps of its program.
fn worker(
    a: &Engine,
    sim: &SimBackend,
    me: usize,
    workers: usize,
    seed: u64,
    ops: usize,
    failed: &AtomicBool,
) -> Counts {
    let _flag = FailFlag(failed);
    let mut rng = Rng::new(seed ^ ((me as u64 + 1) << 32));
    let own = worker_stream(me);
    let mut counts = Counts::default();
    let mut live: Vec<Buffer<'_>> = Vec::new();
    for _ in 0..ops {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        match rng.below(100) {
            // allocate, then launch work on its stream that uses it and
            // that stream's other live buffers
            0..38 => {
                if live.len() >= MAX_LIVE {
                    let i = rng.below(live.len());
                    drop(live.swap_remove(i));
                    counts.frees += 1;
                }
                let stream = if rng.below(100) < 80 { own } else { SHARED };
                let bytes = pick_size(&mut rng);
                match allocate(a, sim, bytes, stream, &mut counts) {
                    Some(b) => {
                        live.push(b);
                        launch_on(sim, stream, &live, &mut counts);
                        // sometimes freed at once, while that work runs
                        if rng.below(100) < 30 {
                            drop(live.pop());
                            counts.frees += 1;
                        }
                    }
                    None => {
                        // make room: drop half of what this worker holds
                        for _ in 0..live.len() / 2 {
                            let i = rng.below(live.len());
                            drop(live.swap_remove(i));
                            counts.frees += 1;
                        }
                    }
                }
            }
            // more work on one of this worker's streams
            38..52 => {
                let stream = if rng.below(100) < 75 { own } else { SHARED };
                launch_on(sim, stream, &live, &mut counts);
            }
            // a buffer used on another worker's stream (or the shared one)
            52..68 => {
                if live.is_empty() {
                    continue;
                }
                let i = rng.below(live.len());
                let other = match rng.below(workers + 1) {
                    w if w < workers && w != me => worker_stream(w),
                    _ => SHARED,
                };
                if other == live[i].stream() {
                    continue;
                }
                live[i].record_stream(other);
                sim.launch_using(other, &[(live[i].ptr().0, live[i].capacity())]);
                counts.cross_uses += 1;
                // often dropped right away: its free waits for that work
                if rng.below(100) < 40 {
                    drop(live.swap_remove(i));
                    counts.frees += 1;
                }
            }
            // drop a buffer (its stream's work may still run)
            68..88 => {
                if !live.is_empty() {
                    let i = rng.below(live.len());
                    drop(live.swap_remove(i));
                    counts.frees += 1;
                }
            }
            // the work launched so far on this worker's stream completes
            88..94 => sim.complete(own),
            94..96 => sim.complete(SHARED),
            // a block on a stream that may be forgotten meanwhile, checked
            // and dropped without launching work
            96..99 => {
                let stream = TRANSIENT[rng.below(TRANSIENT.len())];
                let bytes = pick_size(&mut rng);
                if let Some(b) = allocate(a, sim, bytes, stream, &mut counts) {
                    drop(b);
                    counts.frees += 1;
                }
            }
            _ => std::thread::yield_now(),
        }
    }
    counts.frees += live.len();
    drop(live);
    counts
}

/// The maintenance thread: releases, looks at the statistics, validates,
/// and allocates on its own stream, which it forgets from time to time
/// (buffers it still holds then belong to the forgotten stream: work on the
/// stream's new incarnation uses them only after `record_stream`).
fn maintenance(
    a: &Engine,
    sim: &SimBackend,
    capacity: usize,
    seed: u64,
    running: &AtomicUsize,
    failed: &AtomicBool,
) -> Counts {
    let _flag = FailFlag(failed);
    let mut rng = Rng::new(seed ^ 0xABCD_0000_0000);
    let mut counts = Counts::default();
    // (buffer, allocated on the current incarnation of DEDICATED)
    let mut live: Vec<(Buffer<'_>, bool)> = Vec::new();
    let mut steps = 0usize;
    while running.load(Ordering::SeqCst) > 0 && !failed.load(Ordering::Relaxed) {
        steps += 1;
        match rng.below(100) {
            0..10 => a.empty_cache(),
            10..25 => a.trim(),
            25..40 => check_stats(a, capacity),
            40..50 => {
                if let Err(e) = a.validate() {
                    panic!("validate during the run (step {steps}): {e}");
                }
            }
            50..72 => {
                if live.len() >= MAX_LIVE {
                    let i = rng.below(live.len());
                    drop(live.swap_remove(i));
                    counts.frees += 1;
                }
                let bytes = pick_size(&mut rng) / 2 + 1;
                if let Some(b) = allocate(a, sim, bytes, DEDICATED, &mut counts) {
                    live.push((b, true));
                    let ranges: Vec<(usize, usize)> = live
                        .iter()
                        .filter(|(_, current)| *current)
                        .map(|(b, _)| (b.ptr().0, b.capacity()))
                        .collect();
                    sim.launch_using(DEDICATED, &ranges);
                    counts.launches += 1;
                }
            }
            72..80 => {
                // a buffer of the forgotten incarnation used on the new one
                if let Some((b, current)) = live.iter_mut().find(|(_, c)| !*c) {
                    b.record_stream(DEDICATED);
                    sim.launch_using(DEDICATED, &[(b.ptr().0, b.capacity())]);
                    *current = true;
                    counts.cross_uses += 1;
                }
            }
            80..90 => {
                if !live.is_empty() {
                    let i = rng.below(live.len());
                    drop(live.swap_remove(i));
                    counts.frees += 1;
                }
            }
            90..93 => {
                let stream = TRANSIENT[rng.below(TRANSIENT.len())];
                a.forget_stream(stream);
                counts.forgets += 1;
            }
            93..95 => {
                a.forget_stream(DEDICATED);
                for (_, current) in &mut live {
                    *current = false;
                }
                counts.forgets += 1;
                if rng.below(2) == 0 {
                    // then a transient stream, whose slot the next new
                    // stream (this one) takes: a block freed on it while
                    // its work runs must never reach a user of the
                    // transient stream (say, one whose allocation was in a
                    // device-wide sync meanwhile)
                    a.forget_stream(TRANSIENT[rng.below(TRANSIENT.len())]);
                    counts.forgets += 1;
                    let bytes = pick_size(&mut rng);
                    if let Some(b) = allocate(a, sim, bytes, DEDICATED, &mut counts) {
                        sim.launch_using(DEDICATED, &[(b.ptr().0, b.capacity())]);
                        counts.launches += 1;
                        drop(b);
                        counts.frees += 1;
                    }
                }
            }
            95..98 => sim.complete(DEDICATED),
            _ => std::thread::yield_now(),
        }
    }
    counts.frees += live.len();
    drop(live);
    counts
}

/// The text of a thread's panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// One run: `workers` workers of `ops` steps each and the maintenance
/// thread, on a fresh device of `capacity` bytes. Returns what they did
/// and the engine's final statistics before the final release.
fn run(
    sim: SimBackend,
    cfg: &str,
    capacity: usize,
    workers: usize,
    ops: usize,
    seed: u64,
    few: bool,
) -> (Counts, alloc_core::Stats) {
    sim.set_auto_complete(false);
    // keep every device-wide sync open a little, so that the other threads
    // act while it runs (the engine's lock is released meanwhile)
    sim.on_synchronize(|| std::thread::sleep(Duration::from_micros(300)));
    let a = CachingAllocator::new(sim.clone(), Config::parse(cfg).unwrap());
    let failed = AtomicBool::new(false);
    let running = AtomicUsize::new(workers);
    let mut total = Counts::default();
    let mut panics = Vec::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for me in 0..workers {
            let (a, sim, failed, running) = (&a, &sim, &failed, &running);
            handles.push((
                format!("worker {me}"),
                scope.spawn(move || {
                    FEW.with(|f| f.set(few));
                    let c = worker(a, sim, me, workers, seed, ops, failed);
                    running.fetch_sub(1, Ordering::SeqCst);
                    c
                }),
            ));
        }
        let (a2, sim2, failed2, running2) = (&a, &sim, &failed, &running);
        let m = scope.spawn(move || {
            FEW.with(|f| f.set(few));
            maintenance(a2, sim2, capacity, seed, running2, failed2)
        });
        // a worker that panicked never decrements `running`: the failure
        // flag stops the maintenance thread then
        handles.push(("maintenance".to_string(), m));
        for (name, h) in handles {
            match h.join() {
                Ok(c) => total.add(&c),
                Err(p) => panics.push(format!("{name}: {}", panic_text(&*p))),
            }
        }
    });
    assert!(
        panics.is_empty(),
        "{cfg:?}, seed {seed}: a thread panicked: {}",
        panics.join("; ")
    );
    let v = sim.violations();
    assert!(
        v.is_empty(),
        "{cfg:?}, seed {seed}: backend contract breached: {v:?}"
    );
    if let Err(e) = a.validate() {
        panic!("{cfg:?}, seed {seed}: validate after the run: {e}");
    }
    let during = a.stats();
    // every buffer was dropped: once all work completes and the cache is
    // emptied, nothing is left
    sim.complete_all();
    a.empty_cache();
    if let Err(e) = a.validate() {
        panic!("{cfg:?}, seed {seed}: validate after empty_cache: {e}");
    }
    let s = a.stats();
    let left = [
        ("allocated_bytes", s.allocated_bytes.all.current),
        ("active_bytes", s.active_bytes.all.current),
        ("requested_bytes", s.requested_bytes.all.current),
        ("reserved_bytes", s.reserved_bytes.all.current),
        ("allocation", s.allocation.all.current),
        ("active", s.active.all.current),
        ("segment", s.segment.all.current),
    ];
    for (name, v) in left {
        assert_eq!(
            v, 0,
            "{cfg:?}, seed {seed}: {name} is {v} with nothing allocated after empty_cache"
        );
    }
    assert_eq!(
        (sim.used(), sim.live_regions()),
        (0, 0),
        "{cfg:?}, seed {seed}: device memory (bytes, regions) still held after empty_cache"
    );
    (total, during)
}

const CAPACITY: usize = 384 * MIB;
const WORKERS: usize = 3;
const OPS: usize = 6000;
const SEEDS: [u64; 5] = [1, 0x5eed, 0xdead_beef, 42, 7_777_777];

/// Runs every seed on a fresh device from `make` and checks that the runs
/// reached the paths this file is about: cross-stream uses, out of memory
/// pressure (the reclaim ladder with its sync) and forgotten streams.
fn run_seeds(make: fn(usize) -> SimBackend, cfg: &str) {
    run_seeds_sized(make, cfg, false);
}

/// [`run_seeds`], with few sizes or any; returns the front cache's hits.
fn run_seeds_sized(make: fn(usize) -> SimBackend, cfg: &str, few: bool) -> i64 {
    let mut all = Counts::default();
    let (mut retries, mut syncs, mut hits) = (0i64, 0i64, 0i64);
    for seed in SEEDS {
        let (c, s) = run(make(CAPACITY), cfg, CAPACITY, WORKERS, OPS, seed, few);
        all.add(&c);
        retries += s.num_alloc_retries;
        syncs += s.num_sync_all_streams;
        hits += s.num_front_cache_hits;
    }
    eprintln!(
        "{cfg:?}, few sizes {few}: {all:?}, alloc retries {retries}, device-wide syncs {syncs}, \
         front-cache hits {hits}"
    );
    assert!(
        all.allocations > 1000,
        "{cfg:?}: too few allocations: {all:?}"
    );
    assert!(
        all.cross_uses > 100,
        "{cfg:?}: too few cross-stream uses: {all:?}"
    );
    assert!(all.forgets > 0, "{cfg:?}: no stream was forgotten: {all:?}");
    assert!(
        retries > 0,
        "{cfg:?}: the reclaim ladder never had to release memory: {all:?}"
    );
    hits
}

/// The same programs, mostly of a few sizes: blocks go through the
/// threads' front-cache shards while the maintenance thread drains them
/// (stats, validate, empty_cache, trim, forget_stream) and the ladder
/// drains them before it grows.
#[test]
fn threads_with_front_cache_hits() {
    for cfg in ["", "expandable_segments:false"] {
        let hits = run_seeds_sized(SimBackend::new, cfg, true);
        // the maintenance thread drains the shards all the time: some hit
        assert!(hits > 100, "{cfg:?}: only {hits} front-cache hits");
    }
}

#[test]
fn threads_expandable_segments() {
    run_seeds(SimBackend::new, "");
}

#[test]
fn threads_fixed_segments() {
    run_seeds(SimBackend::new, "expandable_segments:false");
}

#[test]
fn threads_without_vm_default_config() {
    run_seeds(SimBackend::without_vm, "");
}

#[test]
fn threads_without_vm_fixed_segments() {
    run_seeds(SimBackend::without_vm, "expandable_segments:false");
}

/// A stream forgotten while its own allocation waits for the ladder's
/// device-wide sync (the lock is released then), its slot taken meanwhile
/// by a new stream that frees a block while its work still runs: once the
/// allocation resumes, it must not draw on the new stream's cache under the
/// slot it looked up before the sync (the block handed out would be in
/// flight on the new stream: the sim's oracle panics in `check_handout`).
/// The sync hook plays the other thread.
#[test]
fn a_stream_forgotten_during_its_allocations_sync() {
    use std::sync::{Arc, OnceLock};
    for (make, cfg) in [
        (SimBackend::new as fn(usize) -> SimBackend, ""),
        (SimBackend::new, "expandable_segments:false"),
        (SimBackend::without_vm, ""),
    ] {
        let (s2, t, d) = (SimStream(2), SimStream(1), SimStream(3));
        let sim = make(100 * MIB);
        sim.set_auto_complete(false);
        let cell: Arc<OnceLock<Arc<Engine>>> = Arc::new(OnceLock::new());
        let fired = Arc::new(AtomicBool::new(false));
        let (cell2, fired2, sim2) = (cell.clone(), fired.clone(), sim.clone());
        sim.on_synchronize(move || {
            if fired2.swap(true, Ordering::SeqCst) {
                return;
            }
            let a = cell2.get().expect("engine set before use");
            a.forget_stream(t);
            // `d` is new: it takes the slot `t` had (its allocation needs
            // a sync of its own, which releases stream 2's cache)
            let b = a.allocate(32 * MIB, d).expect("32 MiB fit on stream 3");
            sim2.check_handout(d, b.ptr(), b.capacity());
            sim2.launch_using(d, &[(b.ptr().0, b.capacity())]);
            drop(b);
        });
        let a = Arc::new(CachingAllocator::new(
            sim.clone(),
            Config::parse(cfg).unwrap(),
        ));
        let _ = cell.set(a.clone());
        // 70 MiB cached on stream 2, whose work runs; stream 1 registered
        let x = a.allocate(70 * MIB, s2).unwrap();
        sim.launch_using(s2, &[(x.ptr().0, x.capacity())]);
        drop(x);
        drop(a.allocate(MIB, t).unwrap());
        // 32 MiB on stream 1 fit only after the sync
        let b = match a.allocate(32 * MIB, t) {
            Ok(b) => b,
            Err(e) => panic!("{cfg:?}: 32 MiB on stream 1: {e}"),
        };
        assert!(
            fired.load(Ordering::SeqCst),
            "{cfg:?}: the ladder did not sync"
        );
        sim.check_handout(t, b.ptr(), b.capacity());
        if let Err(e) = a.validate() {
            panic!("{cfg:?}: {e}");
        }
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
        drop(b);
    }
}
