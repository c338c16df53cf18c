//! core:P2 (`alloc_core::CoreInvariant::P2`): a device-wide sync that could
//! not wait for every stream proves nothing idle by the free clock. The sim
//! skips a stream on sync (`SimBackend::skip_on_sync`), as the CUDA backend
//! must skip a stream that captures a graph, another thread's per-thread
//! stream, or a stream past its known-stream table; that stream's work keeps
//! running across the sync. The sim's in-flight oracle panics if memory the
//! running work uses is unmapped, deallocated or handed to another stream's
//! user. Before the coverage was reported, the engine took such a sync for a
//! full one and released or reused the memory (each test below panicked).

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};

const MIB: usize = 1 << 20;

/// A sim whose work completes only when a test says so, with stream 1
/// skipped by every device-wide sync.
fn sim_skipping_stream_1(capacity: usize) -> SimBackend {
    let sim = SimBackend::new(capacity);
    sim.set_auto_complete(false);
    sim.skip_on_sync(SimStream(1), true);
    sim
}

#[test]
fn empty_cache_keeps_a_block_whose_stream_the_sync_skipped() {
    for cfg in ["", "expandable_segments:false"] {
        let sim = sim_skipping_stream_1(1 << 30);
        let a = CachingAllocator::new(sim.clone(), Config::parse(cfg).unwrap());
        let s1 = SimStream(1);
        let x = a.allocate(40 * MIB, s1).unwrap();
        sim.launch_using(s1, &[(x.ptr().0, x.capacity())]);
        drop(x); // free on its own stream; stream 1's work still writes it
        a.empty_cache(); // the sync skips stream 1: x must stay
        assert!(sim.syncs() >= 1, "`{cfg}`: empty_cache synchronised");
        assert!(
            a.stats().reserved_bytes.all.current as usize >= 40 * MIB,
            "`{cfg}`: x was released while stream 1's work used it"
        );
        sim.complete(s1);
        a.empty_cache(); // stream 1 is idle now (its event says so)
        assert_eq!(a.stats().reserved_bytes.all.current, 0, "`{cfg}`");
        a.validate().unwrap();
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }
}

#[test]
fn a_pending_free_waits_past_a_sync_that_skipped_its_stream() {
    for cfg in ["", "expandable_segments:false"] {
        let sim = sim_skipping_stream_1(1 << 30);
        let a = CachingAllocator::new(sim.clone(), Config::parse(cfg).unwrap());
        let (s1, s2) = (SimStream(1), SimStream(2));
        let y = a.allocate(8 * MIB, s2).unwrap();
        y.record_stream(s1);
        sim.launch_using(s1, &[(y.ptr().0, y.capacity())]);
        let (py, n) = (y.ptr(), y.capacity());
        drop(y); // pending on stream 1's event
        a.empty_cache();
        assert_eq!(
            a.stats().active_bytes.all.current as usize,
            n,
            "`{cfg}`: the free of y was completed by a sync that skipped stream 1"
        );
        // a user of stream 2 must not get y while stream 1 writes it
        let z = a.allocate(8 * MIB, s2).unwrap();
        sim.check_handout(s2, z.ptr(), z.capacity());
        assert_ne!(z.ptr(), py, "`{cfg}`");
        drop(z);
        sim.complete(s1);
        a.empty_cache();
        assert_eq!(a.stats().active_bytes.all.current, 0, "`{cfg}`");
        assert_eq!(a.stats().reserved_bytes.all.current, 0, "`{cfg}`");
        a.validate().unwrap();
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }
}

#[test]
fn the_ladder_does_not_reclaim_a_skipped_streams_memory() {
    for cfg in ["", "expandable_segments:false"] {
        let sim = sim_skipping_stream_1(100 * MIB);
        let a = CachingAllocator::new(sim.clone(), Config::parse(cfg).unwrap());
        let (s0, s1) = (SimStream(0), SimStream(1));
        let x = a.allocate(60 * MIB, s1).unwrap();
        sim.launch_using(s1, &[(x.ptr().0, x.capacity())]);
        drop(x);
        // 60 MiB more fits only by releasing x, which stream 1 still uses:
        // the ladder's sync skips stream 1, so this is out of memory
        let r = a.allocate(60 * MIB, s0);
        assert!(sim.syncs() >= 1, "`{cfg}`: the ladder synchronised");
        if let Ok(b) = &r {
            sim.check_handout(s0, b.ptr(), b.capacity());
        }
        assert!(
            r.is_err(),
            "`{cfg}`: x was reclaimed while stream 1 used it"
        );
        drop(r);
        // once stream 1's work completes, the ladder finds x idle by its event
        sim.complete(s1);
        let b = a
            .allocate(60 * MIB, s0)
            .expect("fits once stream 1 is idle");
        sim.check_handout(s0, b.ptr(), b.capacity());
        drop(b);
        a.validate().unwrap();
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }
}

#[test]
fn a_full_sync_still_covers_every_stream() {
    // the control: without a skip, the same empty_cache releases x at once
    let sim = SimBackend::new(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    let s1 = SimStream(1);
    let x = a.allocate(40 * MIB, s1).unwrap();
    sim.launch_using(s1, &[(x.ptr().0, x.capacity())]);
    drop(x);
    a.empty_cache();
    assert_eq!(a.stats().reserved_bytes.all.current, 0);
    assert!(!sim.busy(s1), "the full sync completed stream 1");
}
