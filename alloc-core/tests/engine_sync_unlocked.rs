//! core:L1 (the locking rule `alloc_core::LockRule::L1`): the device-wide sync
//! of the reclaim ladder and of `empty_cache` runs with the engine's lock
//! released, and after it the engine trusts the sync only for what it covers.
//! The sim's `on_synchronize` hook acts "during" the
//! sync from another thread: it allocates, launches work and frees, as a
//! server's other request threads would. Those operations must get through
//! (the lock is free), and what they did must not be treated as idle: a block
//! freed meanwhile while its stream's work still runs must not be released
//! (the sim's in-flight oracle panics on an unmap of a busy range), and a
//! free deferred meanwhile must stay pending.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};

const MIB: usize = 1 << 20;

type Engine = CachingAllocator<SimBackend>;

/// What the other thread did during the sync.
#[derive(Default, Debug)]
struct During {
    /// The other thread finished within the window (the lock was free).
    got_through: bool,
    /// Size of the block whose free was deferred during the sync.
    deferred: usize,
}

/// Installs a hook that, on the first sync only, runs `work` on another
/// thread and waits up to 10 s for it.
fn hook_once(
    sim: &SimBackend,
    engine: Arc<OnceLock<Arc<Engine>>>,
    during: Arc<Mutex<During>>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    work: fn(&Engine, &SimBackend) -> usize,
) {
    let fired = AtomicBool::new(false);
    let sim2 = sim.clone();
    sim.on_synchronize(move || {
        if fired.swap(true, Ordering::SeqCst) {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let (engine, sim) = (engine.clone(), sim2.clone());
        let h = std::thread::spawn(move || {
            let a = engine.get().expect("engine set before use");
            let deferred = work(a, &sim);
            let _ = tx.send(deferred);
        });
        threads.lock().unwrap().push(h);
        let mut d = during.lock().unwrap();
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(n) => {
                d.got_through = true;
                d.deferred = n;
            }
            Err(_) => d.got_through = false,
        }
    });
}

/// During the sync: a block freed on stream 2 while work launched on stream
/// 2 uses it, and a block freed on stream 3 after stream 4 used it (its free
/// deferred to an event of stream 4). Returns the deferred block's size.
fn free_busy_blocks(a: &Engine, sim: &SimBackend) -> usize {
    let (s2, s3, s4) = (SimStream(2), SimStream(3), SimStream(4));
    let x = a.allocate(8 * MIB, s2).expect("8 MiB fits during the sync");
    sim.launch_using(s2, &[(x.ptr().0, x.capacity())]);
    drop(x);
    let y = a.allocate(MIB, s3).expect("1 MiB fits during the sync");
    y.record_stream(s4);
    sim.launch_using(s4, &[(y.ptr().0, y.capacity())]);
    let n = y.capacity();
    drop(y);
    n
}

struct Setup {
    sim: SimBackend,
    a: Arc<Engine>,
    during: Arc<Mutex<During>>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

fn setup(capacity: usize, cfg: &str) -> Setup {
    let sim = SimBackend::new(capacity);
    sim.set_auto_complete(false);
    let cell: Arc<OnceLock<Arc<Engine>>> = Arc::new(OnceLock::new());
    let during = Arc::new(Mutex::new(During::default()));
    let threads = Arc::new(Mutex::new(Vec::new()));
    hook_once(
        &sim,
        cell.clone(),
        during.clone(),
        threads.clone(),
        free_busy_blocks,
    );
    let a = Arc::new(CachingAllocator::new(
        sim.clone(),
        Config::parse(cfg).unwrap(),
    ));
    let _ = cell.set(a.clone());
    Setup {
        sim,
        a,
        during,
        threads,
    }
}

fn check_after(s: &Setup, in_use: usize) {
    for h in s.threads.lock().unwrap().drain(..) {
        h.join().expect("the other thread did not panic");
    }
    let d = s.during.lock().unwrap();
    assert!(
        d.got_through,
        "the other thread's allocate and free did not get through during the sync: the engine held its lock across it"
    );
    s.a.validate().unwrap();
    let st = s.a.stats();
    // in use + pending: the free deferred to stream 4's event during the sync
    // is still pending (stream 4's work runs)
    assert_eq!(
        st.active_bytes.all.current as usize,
        in_use + d.deferred,
        "the free deferred during the sync was completed by it"
    );
    assert!(s.sim.violations().is_empty(), "{:?}", s.sim.violations());
}

#[test]
fn the_ladders_sync_releases_the_lock_and_covers_only_what_came_before() {
    for cfg in ["", "expandable_segments:false"] {
        let s = setup(100 * MIB, cfg);
        let (s0, s1) = (SimStream(0), SimStream(1));
        // 70 MiB cached on stream 1 (a 40 and a 30 MiB block: with fixed
        // segments, two segments), whose work is still running
        let b1 = s.a.allocate(40 * MIB, s1).unwrap();
        let b2 = s.a.allocate(30 * MIB, s1).unwrap();
        s.sim.launch(s1);
        drop((b1, b2));
        // 50 MiB on stream 0 fits only once stream 1's cache is released,
        // which needs the sync; during it the other thread takes 8 MiB of
        // stream 1's cache (the 30 MiB block: best fit) and frees it while
        // stream 2's work uses it, so the rest of that block (or with fixed
        // segments, that whole segment) must stay
        let big = s.a.allocate(50 * MIB, s0).expect("fits after the sync");
        assert!(s.sim.syncs() >= 1, "{cfg}: the ladder synchronised");
        check_after(&s, big.capacity());
        drop(big);
    }
}

#[test]
fn empty_caches_sync_releases_the_lock_and_covers_only_what_came_before() {
    let s = setup(1 << 30, "");
    let b = s.a.allocate(40 * MIB, SimStream(1)).unwrap();
    s.sim.launch(SimStream(1));
    drop(b);
    s.a.empty_cache();
    check_after(&s, 0);
    // stream 1's cache went back (the sync covered it); stream 2's block,
    // freed during the sync while its work ran, was kept
    let st = s.a.stats();
    assert!(
        st.reserved_bytes.all.current as usize >= 8 * MIB,
        "stream 2's busy block was released: {}",
        st.reserved_bytes.all.current
    );
    assert!((st.reserved_bytes.all.current as usize) < 40 * MIB);
}

/// A free deferred before the sync (its block used on another stream) is
/// completed by the sync, and its block counts as idle although its own
/// stream got new work during the sync: the new work cannot use a block that
/// was not allocated. So the ladder can release it, and 70 MiB fits.
#[test]
fn a_free_completed_by_the_sync_is_idle_although_its_stream_got_new_work() {
    let sim = SimBackend::new(100 * MIB);
    sim.set_auto_complete(false);
    let (s0, s1, s2) = (SimStream(0), SimStream(1), SimStream(2));
    let fired = AtomicBool::new(false);
    let sim2 = sim.clone();
    sim.on_synchronize(move || {
        if !fired.swap(true, Ordering::SeqCst) {
            // another thread's work on stream 1, launched during the sync
            sim2.launch(s1);
        }
    });
    let a = CachingAllocator::new(sim.clone(), Config::default());
    let x = a.allocate(40 * MIB, s1).unwrap();
    x.record_stream(s2);
    sim.launch_using(s2, &[(x.ptr().0, x.capacity())]);
    drop(x); // pending until stream 2's work completes
    let big = a.allocate(70 * MIB, s0);
    assert!(
        big.is_ok(),
        "70 MiB did not fit after the sync freed 40 MiB: {:?}",
        big.err()
    );
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    drop(big);
    a.validate().unwrap();
}

/// Runs the ladder's sync scenario of stream 1's cached 40 MiB on a 100 MiB
/// device with `during` acting in the sync (once, on this thread: the lock is
/// free then), and returns whether 70 MiB on stream 0 then fits.
fn seventy_after(during: fn(&Engine, &SimBackend), defer_via_stream_2: bool) -> bool {
    let sim = SimBackend::new(100 * MIB);
    sim.set_auto_complete(false);
    let (s0, s1, s2) = (SimStream(0), SimStream(1), SimStream(2));
    let cell: Arc<OnceLock<Arc<Engine>>> = Arc::new(OnceLock::new());
    let fired = AtomicBool::new(false);
    let (sim2, cell2) = (sim.clone(), cell.clone());
    sim.on_synchronize(move || {
        if !fired.swap(true, Ordering::SeqCst)
            && let Some(a) = cell2.get()
        {
            during(a, &sim2);
        }
    });
    let a = Arc::new(CachingAllocator::new(sim.clone(), Config::default()));
    let _ = cell.set(a.clone());
    let x = a.allocate(40 * MIB, s1).unwrap();
    if defer_via_stream_2 {
        x.record_stream(s2);
        sim.launch_using(s2, &[(x.ptr().0, x.capacity())]);
    } else {
        sim.launch_using(s1, &[(x.ptr().0, x.capacity())]);
    }
    drop(x);
    let fits = a.allocate(70 * MIB, s0).is_ok();
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    a.validate().unwrap();
    fits
}

/// The covered free is completed by another thread's `trim` during the sync
/// (any allocation there does the same), not by the syncing thread: its
/// block is still idle by the sync.
#[test]
fn a_covered_free_completed_by_another_thread_during_the_sync_stays_idle() {
    assert!(
        seventy_after(
            |a, sim| {
                sim.launch(SimStream(1));
                a.trim();
            },
            true
        ),
        "70 MiB did not fit: the 40 MiB freed before the sync was kept"
    );
}

/// Stream 1's 40 MiB was free before the sync; during it another thread
/// frees an unrelated small buffer on stream 1 and queues more work there.
/// The 40 MiB is still idle by the sync (PyTorch, syncing under its lock,
/// releases it too).
#[test]
fn an_unrelated_free_during_the_sync_does_not_pin_the_streams_cache() {
    assert!(
        seventy_after(
            |a, sim| {
                let s1 = SimStream(1);
                let small = a.allocate(512, s1).unwrap();
                sim.launch_using(s1, &[(small.ptr().0, small.capacity())]);
                drop(small);
            },
            false
        ),
        "70 MiB did not fit: one small free on stream 1 during the sync pinned its 40 MiB"
    );
}
