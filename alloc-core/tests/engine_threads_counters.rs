//! The counter model under concurrency: several threads, each on its own
//! stream, allocate and free on the simulated device while a sampler thread
//! reads the statistics; PyTorch's counters are checked against a model the
//! threads keep of their own buffers.
//!
//! The statistics' rule while threads run ("the host side's rule"): exact
//! when one thread uses the engine; exact at quiescence (no operation in
//! flight); while threads run, the device-wide peak may miss the true peak,
//! below it or above it, by at most [`PEAK_LAG_PER_SHARD`] bytes per shard
//! (per thread that allocates). The engine's front cache (`front_cache_mb`, per-thread
//! shards) folds a shard's counters into the engine's at the thread's next
//! locked operation and whenever the statistics are read; until then the
//! peak may miss what the other shards handed out since their last fold
//! (below the true peak) or count blocks they took back since as still in
//! use (above it, as the front cache's loom models show), at most a shard's
//! byte cap each. The upper bound below (the sum of every worker's most)
//! already covers the second. Every run here sets the cap to
//! [`FRONT_MB`]; the runs with few sizes make the shards hit, and the runs
//! without the sampler leave them unfolded until the quiescent point.
//!
//! What is checked:
//! - at every quiescent point (all workers wait at a barrier): `allocation`,
//!   `allocated_bytes`, `requested_bytes` and `active_bytes` (current,
//!   allocated and freed, for both pools and `all`) equal the sums of the
//!   workers' models exactly;
//! - the peak of `allocated_bytes.all` (reset at every quiescent point) lies
//!   between a lower bound (the most any worker held in the phase, plus the
//!   least every other worker held meanwhile, less the stated lag) and an
//!   upper bound (the sum of every worker's most in the phase); in every
//!   other phase one worker runs alone, the bounds meet and the peak must be
//!   exact (one thread: no lag);
//! - at every look of the sampler while the workers run: `all` is the sum
//!   of the pools, current = allocated − freed, current ≤ peak, allocated ≤
//!   active ≤ reserved, the totals and peaks never go down between looks,
//!   and nothing passes the sum of the workers' caps (plus the lag).
//!
//! The blocks in use are never shared between streams here (no
//! `record_stream`), so every free completes at once and the requested and
//! active bytes follow the model exactly.
//!
//! The last test is the hand-off between streams under threads: on a device
//! too small for both, one thread's freed blocks (idle or still in flight
//! on its stream) are taken by the other thread's stream (reuse of idle
//! cache, the ladder's release after its sync) while both run; the sim's
//! in-flight oracle checks every block handed out.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};

use alloc_core::{CachingAllocator, Config, DeviceBuffer, SimBackend, SimStream, Stats};

/// The byte cap of a front-cache shard in every run here (MiB).
const FRONT_MB: usize = 16;

/// The most the device-wide peak of `allocated_bytes` may miss the true peak
/// (either way) while threads run, per shard (per thread that allocates): a shard's byte
/// cap, which bounds what it can hand out between two folds.
const PEAK_LAG_PER_SHARD: i64 = (FRONT_MB << 20) as i64;

const MIB: usize = 1 << 20;
const WORKERS: usize = 4;
const PHASES: usize = 12;
const STEPS: usize = 400;
/// Live buffers one worker may hold.
const MAX_LIVE: usize = 24;
/// The largest request: a worker holds at most `MAX_LIVE` of them.
const MAX_SIZE: usize = 6 * MIB;

/// xorshift64*: a small deterministic generator, one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A request size: small-pool sizes up to 512 KiB, large ones from 2 MiB
/// to `MAX_SIZE` (never near the 1 MiB boundary, so that the pool of a
/// request is clear from its size).
fn pick_size(rng: &mut Rng, few: bool) -> usize {
    if few {
        // repeated sizes: the front cache hits
        const FEW: [usize; 6] = [700, 4096, 100 << 10, 5 * MIB / 2, 4 * MIB, MAX_SIZE];
        return FEW[rng.below(FEW.len())];
    }
    if rng.below(3) == 0 {
        2 * MIB + rng.below(MAX_SIZE - 2 * MIB)
    } else {
        1 + rng.below(512 << 10)
    }
}

/// One pool's part of a worker's model.
#[derive(Clone, Copy, Default, Debug)]
struct PoolModel {
    /// Blocks held now.
    count: i64,
    /// Bytes held now (block sizes).
    bytes: i64,
    /// Bytes asked for, of the blocks held now.
    requested: i64,
    /// Blocks handed out in all.
    count_in: i64,
    /// Blocks freed in all.
    count_out: i64,
    /// Bytes handed out in all.
    bytes_in: i64,
    /// Bytes freed in all.
    bytes_out: i64,
    /// Requested bytes handed out in all.
    requested_in: i64,
    /// Requested bytes freed in all.
    requested_out: i64,
}

/// A worker's model of its own buffers: per pool (0 small, 1 large), and the
/// least and most bytes it held during the current phase.
#[derive(Clone, Copy, Default, Debug)]
struct Model {
    pools: [PoolModel; 2],
    phase_min: i64,
    phase_max: i64,
}

impl Model {
    fn held(&self) -> i64 {
        self.pools[0].bytes + self.pools[1].bytes
    }

    fn alloc(&mut self, b: &DeviceBuffer<'_, SimBackend>) {
        let p = &mut self.pools[pool_of(b.len())];
        let (size, req) = (b.capacity() as i64, b.len() as i64);
        p.count += 1;
        p.count_in += 1;
        p.bytes += size;
        p.bytes_in += size;
        p.requested += req;
        p.requested_in += req;
        self.phase_max = self.phase_max.max(self.held());
    }

    /// Called before the buffer is dropped: the counters may lag the model's
    /// minimum only in the safe direction (the block is still held when the
    /// model already counts it freed; the minimum stays a lower bound).
    fn free(&mut self, b: &DeviceBuffer<'_, SimBackend>) {
        let p = &mut self.pools[pool_of(b.len())];
        let (size, req) = (b.capacity() as i64, b.len() as i64);
        p.count -= 1;
        p.count_out += 1;
        p.bytes -= size;
        p.bytes_out += size;
        p.requested -= req;
        p.requested_out += req;
        self.phase_min = self.phase_min.min(self.held());
    }

    fn start_phase(&mut self) {
        self.phase_min = self.held();
        self.phase_max = self.held();
    }
}

fn pool_of(requested: usize) -> usize {
    usize::from(requested > MIB)
}

/// Fails the check with the message unless `cond` holds (a failed check
/// must not unwind: the other threads would wait at a barrier for ever).
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// `got` must equal `want`; names the counter.
fn same(name: &str, got: i64, want: i64, phase: usize) -> Result<(), String> {
    ensure!(
        got == want,
        "{name} is {got}, the counter model says {want} (quiescent point after phase {phase})"
    );
    Ok(())
}

/// The exact checks of a quiescent point.
fn check_quiescent(s: &Stats, models: &[Model], phase: usize) -> Result<(), String> {
    for (pool, name) in [(0usize, "small_pool"), (1, "large_pool")] {
        let sum = |f: fn(&PoolModel) -> i64| models.iter().map(|m| f(&m.pools[pool])).sum::<i64>();
        let a = s.allocation.pool(pool_enum(pool));
        same(
            &format!("allocation.{name}.current"),
            a.current,
            sum(|p| p.count),
            phase,
        )?;
        same(
            &format!("allocation.{name}.allocated"),
            a.allocated,
            sum(|p| p.count_in),
            phase,
        )?;
        same(
            &format!("allocation.{name}.freed"),
            a.freed,
            sum(|p| p.count_out),
            phase,
        )?;
        let b = s.allocated_bytes.pool(pool_enum(pool));
        same(
            &format!("allocated_bytes.{name}.current"),
            b.current,
            sum(|p| p.bytes),
            phase,
        )?;
        same(
            &format!("allocated_bytes.{name}.allocated"),
            b.allocated,
            sum(|p| p.bytes_in),
            phase,
        )?;
        same(
            &format!("allocated_bytes.{name}.freed"),
            b.freed,
            sum(|p| p.bytes_out),
            phase,
        )?;
        let r = s.requested_bytes.pool(pool_enum(pool));
        same(
            &format!("requested_bytes.{name}.current"),
            r.current,
            sum(|p| p.requested),
            phase,
        )?;
        same(
            &format!("requested_bytes.{name}.allocated"),
            r.allocated,
            sum(|p| p.requested_in),
            phase,
        )?;
        same(
            &format!("requested_bytes.{name}.freed"),
            r.freed,
            sum(|p| p.requested_out),
            phase,
        )?;
        // nothing waits for events: active = allocated
        let c = s.active_bytes.pool(pool_enum(pool));
        same(
            &format!("active_bytes.{name}.current"),
            c.current,
            sum(|p| p.bytes),
            phase,
        )?;
    }
    Ok(())
}

fn pool_enum(i: usize) -> alloc_core::size_class::Pool {
    if i == 0 {
        alloc_core::size_class::Pool::Small
    } else {
        alloc_core::size_class::Pool::Large
    }
}

/// Checks that hold at any look, also while the workers run; `prev` is the
/// sampler's previous look, `peaks_kept` whether no `reset_peak` ran
/// between the two.
fn check_look(s: &Stats, prev: &Stats, peaks_kept: bool, cap: i64) -> Result<(), String> {
    for (name, a, p) in [
        ("allocation", &s.allocation, &prev.allocation),
        ("allocated_bytes", &s.allocated_bytes, &prev.allocated_bytes),
        ("requested_bytes", &s.requested_bytes, &prev.requested_bytes),
        ("active_bytes", &s.active_bytes, &prev.active_bytes),
        ("reserved_bytes", &s.reserved_bytes, &prev.reserved_bytes),
    ] {
        for (f, all, small, large) in [
            (
                "current",
                a.all.current,
                a.small_pool.current,
                a.large_pool.current,
            ),
            (
                "allocated",
                a.all.allocated,
                a.small_pool.allocated,
                a.large_pool.allocated,
            ),
            ("freed", a.all.freed, a.small_pool.freed, a.large_pool.freed),
        ] {
            ensure!(
                all == small + large,
                "{name}.all.{f} is not the sum of the pools: {s:?}"
            );
        }
        for (pool, st, pst) in [
            ("all", &a.all, &p.all),
            ("small_pool", &a.small_pool, &p.small_pool),
            ("large_pool", &a.large_pool, &p.large_pool),
        ] {
            ensure!(
                st.current == st.allocated - st.freed,
                "{name}.{pool}: current {} ≠ allocated {} − freed {}",
                st.current,
                st.allocated,
                st.freed
            );
            ensure!(
                st.current <= st.peak,
                "{name}.{pool}: current {} above peak {}",
                st.current,
                st.peak
            );
            ensure!(
                st.allocated >= pst.allocated
                    && st.freed >= pst.freed
                    && (st.peak >= pst.peak || !peaks_kept),
                "{name}.{pool} went down between two looks: {pst:?} then {st:?}"
            );
        }
    }
    let lag = PEAK_LAG_PER_SHARD * WORKERS as i64;
    let (alloc, active, reserved) = (
        s.allocated_bytes.all.current,
        s.active_bytes.all.current,
        s.reserved_bytes.all.current,
    );
    ensure!(
        0 <= alloc && alloc <= active && active <= reserved,
        "allocated {alloc} B, active {active} B, reserved {reserved} B"
    );
    ensure!(
        s.allocated_bytes.all.peak <= cap + lag,
        "allocated_bytes.all.peak {} above the workers' cap {cap} B",
        s.allocated_bytes.all.peak
    );
    Ok(())
}

/// One worker's phase: `STEPS` steps of allocating (on its own stream) and
/// freeing its buffers.
fn run_phase<'a>(
    a: &'a CachingAllocator<SimBackend>,
    few: bool,
    stream: SimStream,
    rng: &mut Rng,
    live: &mut Vec<DeviceBuffer<'a, SimBackend>>,
    model: &mut Model,
) -> Result<(), String> {
    for _ in 0..STEPS {
        if live.len() < MAX_LIVE && (live.is_empty() || rng.below(100) < 55) {
            let size = pick_size(rng, few);
            let b = a
                .allocate(size, stream)
                .map_err(|e| format!("{size} B on {stream:?}: {e}"))?;
            model.alloc(&b);
            live.push(b);
        } else {
            let b = live.swap_remove(rng.below(live.len()));
            model.free(&b);
            drop(b);
        }
    }
    Ok(())
}

/// The text of a panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".to_string()
    }
}

/// Keeps the first failure of any thread.
fn fail(failures: &Mutex<Vec<String>>, r: Result<(), String>) {
    if let Err(e) = r {
        failures.lock().unwrap().push(e);
    }
}

/// The bounds of `allocated_bytes.all.peak` at the quiescent point after
/// `phase`, from the workers' models (`lower`, `upper`: what was held when
/// the phase began, raised here).
fn check_peak(
    s: &Stats,
    ms: &[Model],
    phase: usize,
    lower: &mut i64,
    upper: &mut i64,
) -> Result<(), String> {
    // one thread alone: exact, whatever the bound while threads run
    let lag = if solo(phase).is_some() {
        0
    } else {
        PEAK_LAG_PER_SHARD * WORKERS as i64
    };
    let now: i64 = ms.iter().map(Model::held).sum();
    // the true peak is at least what one worker held at its most while
    // every other held at least its least
    for (i, m) in ms.iter().enumerate() {
        let others: i64 = ms
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, o)| o.phase_min)
            .sum();
        *lower = (*lower).max(m.phase_max + others).max(now);
    }
    *upper = (*upper).max(ms.iter().map(|m| m.phase_max).sum());
    let peak = s.allocated_bytes.all.peak;
    ensure!(
        peak >= *lower - lag && peak <= *upper,
        "allocated_bytes.all.peak is {peak} B after phase {phase}: the model bounds it to \
         [{} − {lag}, {}] B",
        *lower,
        *upper
    );
    Ok(())
}

/// Who runs in `phase`: every worker in even phases; in odd ones, one worker
/// alone (in turn), so that the peak's bounds meet and the peak is exact.
fn solo(phase: usize) -> Option<usize> {
    (phase % 2 == 1).then_some(phase / 2 % WORKERS)
}

/// How a run asks and looks.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// Requests of a few sizes (the front cache hits) or of any size.
    few: bool,
    /// A sampler reads the statistics all the time (which folds the shards)
    /// or only the quiescent points do (the shards stay unfolded).
    sampler: bool,
}

/// The model under concurrency: `WORKERS` threads, `PHASES` phases, a
/// sampler looking all the time (if `mode` says so); exact at every
/// quiescent point, bounded while the workers run. A failed check is
/// recorded, never unwound, so that every thread still reaches every
/// barrier. Returns the front cache's hits.
fn run(seed: u64, cfg: &str, mode: Mode) -> i64 {
    let cfg = format!("front_cache_mb:{FRONT_MB},{cfg}");
    let cfg = cfg.trim_end_matches(',');
    let a = CachingAllocator::new(SimBackend::new(64 << 30), Config::parse(cfg).unwrap());
    // Σ of the workers' most: each holds at most MAX_LIVE blocks of at most
    // MAX_SIZE rounded up to the large pool's 2 MiB granule
    let cap = (WORKERS * MAX_LIVE * (MAX_SIZE + 2 * MIB)) as i64;
    let models = Mutex::new(vec![Model::default(); WORKERS]);
    let failures = Mutex::new(Vec::new());
    let phase_done = Barrier::new(WORKERS + 1);
    let phase_go = Barrier::new(WORKERS + 1);
    let stop = AtomicBool::new(false);
    // `reset_peak` calls: counted before each call and after it
    let resets = AtomicU64::new(0);
    let mut looks = 0u64;
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (a, models, failures) = (&a, &models, &failures);
            let (phase_done, phase_go) = (&phase_done, &phase_go);
            s.spawn(move || {
                let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(w as u64 + 1));
                let mut live = Vec::new();
                let mut model = Model::default();
                let stream = SimStream(w as u32);
                let mut ok = true;
                for phase in 0..PHASES {
                    model.start_phase();
                    if ok && solo(phase).is_none_or(|who| who == w) {
                        // a panic (the sim's oracle, an engine assertion)
                        // is a failure too, and must not leave the barrier
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            run_phase(a, mode.few, stream, &mut rng, &mut live, &mut model)
                        }))
                        .unwrap_or_else(|p| {
                            Err(format!("worker {w} panicked: {}", panic_text(&*p)))
                        });
                        ok = r.is_ok();
                        fail(failures, r);
                    }
                    models.lock().unwrap()[w] = model;
                    phase_done.wait();
                    phase_go.wait();
                }
                for b in live.drain(..) {
                    model.free(&b);
                    drop(b);
                }
                models.lock().unwrap()[w] = model;
            });
        }
        let sampler = s.spawn(|| {
            // the reset count read before the previous look: the peaks may
            // not go down unless a reset ran (or began, or ended) between
            // that read and the read after this look, or one was under way
            // (an odd count) all along
            let mut resets_before_prev = resets.load(Ordering::SeqCst);
            let mut prev = a.stats();
            let mut n = 0u64;
            while mode.sampler && !stop.load(Ordering::Relaxed) {
                let resets_before = resets.load(Ordering::SeqCst);
                let now = a.stats();
                let resets_after = resets.load(Ordering::SeqCst);
                let kept = resets_after == resets_before_prev && resets_after % 2 == 0;
                let r = check_look(&now, &prev, kept, cap);
                resets_before_prev = resets_before;
                if r.is_err() {
                    fail(&failures, r);
                    break;
                }
                prev = now;
                n += 1;
                // leave the lock to the workers now and then
                std::thread::yield_now();
            }
            n
        });
        // the quiescent points
        let (mut lower, mut upper) = (0i64, 0i64);
        for phase in 0..PHASES {
            phase_done.wait();
            let s = a.stats();
            let ms = models.lock().unwrap().clone();
            fail(&failures, check_quiescent(&s, &ms, phase));
            fail(
                &failures,
                check_peak(&s, &ms, phase, &mut lower, &mut upper),
            );
            // the next phase's peak is bounded afresh: from what is held now
            resets.fetch_add(1, Ordering::SeqCst);
            a.reset_peak();
            resets.fetch_add(1, Ordering::SeqCst);
            let held: i64 = ms.iter().map(Model::held).sum();
            (lower, upper) = (held, held);
            phase_go.wait();
        }
        stop.store(true, Ordering::Relaxed);
        looks = sampler.join().unwrap();
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "seed {seed}, config {cfg:?}, {mode:?}: {} failed checks, the first: {}",
        failures.len(),
        failures[0]
    );
    let s = a.stats();
    let ms = models.into_inner().unwrap();
    check_quiescent(&s, &ms, PHASES).unwrap();
    assert_eq!(s.allocated_bytes.all.current, 0);
    a.validate().unwrap();
    assert!(looks > 0 || !mode.sampler, "the sampler never looked");
    s.num_front_cache_hits
}

const ANY: Mode = Mode {
    few: false,
    sampler: true,
};

#[test]
fn counters_follow_the_model_under_threads_expandable() {
    for seed in [1, 2, 3] {
        run(seed, "", ANY);
    }
}

#[test]
fn counters_follow_the_model_under_threads_fixed() {
    for seed in [4, 5] {
        run(seed, "expandable_segments:False", ANY);
    }
}

/// Few sizes: the shards hit; with the sampler (folds all the time) and
/// without it (the shards stay unfolded between quiescent points, where the
/// peak's lag bound is what is checked).
#[test]
fn counters_follow_the_model_under_threads_with_shard_hits() {
    let mut hits = 0;
    for (seed, cfg) in [(6, ""), (7, "expandable_segments:False")] {
        for sampler in [true, false] {
            hits += run(seed, cfg, Mode { few: true, sampler });
        }
    }
    assert!(hits > 1000, "the front cache hit {hits} times");
}

/// One side of the hand-off: `rounds` times, allocate on `stream` (a large
/// block, now and then a small one), check the block with the in-flight
/// oracle, launch work that uses every live block, free the oldest while
/// that work may still run, and now and then complete the stream's work.
/// Returns the out-of-memory errors seen.
fn hand_off_side(
    a: &CachingAllocator<SimBackend>,
    sim: &SimBackend,
    stream: SimStream,
    seed: u64,
    rounds: usize,
    few: bool,
) -> Result<usize, String> {
    let mut rng = Rng(seed);
    let mut live: Vec<DeviceBuffer<'_, SimBackend>> = Vec::new();
    let mut ooms = 0;
    for _ in 0..rounds {
        let size = if few {
            // repeated sizes: blocks come back through the front cache
            [100 << 10, 4 * MIB, 6 * MIB][rng.below(3)]
        } else if rng.below(4) == 0 {
            1 + rng.below(256 << 10)
        } else {
            4 * MIB + rng.below(4 * MIB)
        };
        match a.allocate(size, stream) {
            Ok(b) => {
                sim.check_handout(stream, b.ptr(), b.capacity());
                live.push(b);
            }
            Err(alloc_core::AllocError::OutOfMemory(_)) => ooms += 1,
            Err(e) => return Err(format!("{size} B on {stream:?}: {e}")),
        }
        let ranges: Vec<(usize, usize)> = live.iter().map(|b| (b.ptr().0, b.capacity())).collect();
        sim.launch_using(stream, &ranges);
        if live.len() > 2 {
            drop(live.remove(0));
        }
        if rng.below(3) == 0 {
            sim.complete(stream);
        }
    }
    drop(live);
    sim.complete(stream);
    Ok(ooms)
}

/// Two threads on two streams share a 64 MiB device: blocks move from one
/// stream's cache to the other's while both run (`num_cross_stream_reuse`
/// counts them), and no block is handed to a stream while work on the other
/// may still use it (the sim's oracle panics in `check_handout`).
#[test]
fn blocks_move_between_streams_under_threads() {
    for (cfg, few) in [
        ("", false),
        ("expandable_segments:False", false),
        ("", true),
        ("expandable_segments:False", true),
    ] {
        let sim = SimBackend::new(64 * MIB);
        sim.set_auto_complete(false);
        let conf = format!("front_cache_mb:{FRONT_MB},{cfg}");
        let a = CachingAllocator::new(
            sim.clone(),
            Config::parse(conf.trim_end_matches(',')).unwrap(),
        );
        let results: Vec<Result<usize, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u32)
                .map(|t| {
                    let (a, sim) = (&a, &sim);
                    s.spawn(move || {
                        std::panic::catch_unwind(AssertUnwindSafe(|| {
                            hand_off_side(a, sim, SimStream(t), 7 + u64::from(t), 3000, few)
                        }))
                        .unwrap_or_else(|p| Err(panic_text(&*p)))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            if let Err(e) = r {
                panic!("config {cfg:?}: {e}");
            }
        }
        let st = a.stats();
        // with few sizes the blocks mostly come back through the shards
        // (and the device is less crowded): the hits are what is tested
        assert!(
            if few {
                st.num_front_cache_hits > 1000
            } else {
                st.num_cross_stream_reuse > 0
            },
            "config {cfg:?}, few sizes {few}: no block moved between the streams, or no \
             front-cache hit ({st:?})"
        );
        assert_eq!(st.allocated_bytes.all.current, 0);
        a.validate().unwrap();
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
        // at rest, with nothing in use, the largest request fits
        let b = a.allocate(8 * MIB, SimStream(0));
        assert!(
            b.is_ok(),
            "config {cfg:?}: 8 MiB on an idle 64 MiB device: {b:?}"
        );
        eprintln!(
            "config {cfg:?}, few sizes {few}: {} front-cache hits, {} cross-stream reuses, {} syncs, {:?} out of memory per thread",
            st.num_front_cache_hits,
            st.num_cross_stream_reuse,
            st.num_sync_all_streams,
            results
                .iter()
                .map(|r| *r.as_ref().unwrap())
                .collect::<Vec<_>>()
        );
    }
}
