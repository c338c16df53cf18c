//! The engine against its oracles in concrete scenarios: no false out of
//! memory (checked by `check_oom_legitimate` and by the request simply
//! succeeding), no reuse of memory a busy stream may still use (the sim's
//! in-flight oracle), and PyTorch's counter definitions.

use alloc_core::{CachingAllocator, Config, DevicePtr, SimBackend, SimStream};

const S0: SimStream = SimStream(0);
const S1: SimStream = SimStream(1);
const MIB: usize = 1 << 20;

fn cfg(s: &str) -> Config {
    Config::parse(s).unwrap()
}

/// Allocates `bytes` on `stream`; on out of memory, asks the oracle whether
/// the failure was legitimate and fails the test with both answers.
macro_rules! must_fit {
    ($a:expr, $bytes:expr, $stream:expr) => {
        match $a.allocate($bytes, $stream) {
            Ok(b) => b,
            Err(e) => panic!(
                "{} B on {:?} failed: {e}; oracle: {:?}",
                $bytes,
                $stream,
                $a.check_oom_legitimate($bytes)
            ),
        }
    };
}

/// (a) Under a 1000 MiB cap with 950 MiB in use, 30 MiB still fit: the grow
/// is bounded by the cap, not inflated past it.
#[test]
fn a_grow_is_bounded_by_the_cap() {
    let a = CachingAllocator::new(SimBackend::new(80 << 30), cfg("max_reserved_mb:1000"));
    let _x = must_fit!(a, 950 * MIB, S0);
    let _y = must_fit!(a, 30 * MIB, S0);
    assert!(a.stats().reserved_bytes.all.peak <= 1000 * MIB as i64);
    a.validate().unwrap();
}

/// (b) On a 1 GiB device with 44 MiB free (another engine holds 80 MiB),
/// 30 MiB fit: the grow is bounded by what the device has.
#[test]
fn b_grow_is_bounded_by_the_device() {
    let sim = SimBackend::new(1 << 30);
    let other = CachingAllocator::new(sim.clone(), Config::default());
    let _o = must_fit!(other, 80 * MIB, S0);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    let _x = must_fit!(a, 900 * MIB, S0);
    assert_eq!(sim.used(), 980 * MIB);
    let _y = must_fit!(a, 30 * MIB, S0);
}

/// (c) A raised memory fraction lets the same stream grow past the old cap.
#[test]
fn c_reservations_follow_a_raised_cap() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    assert_eq!(a.set_memory_fraction(0.25), Some(256 * MIB));
    let _x = must_fit!(a, 200 * MIB, S0);
    assert!(a.allocate(100 * MIB, S0).is_err(), "the 0.25 cap holds");
    assert_eq!(a.set_memory_fraction(1.0), Some(1 << 30));
    let _y = must_fit!(a, 300 * MIB, S0);
}

/// (d) Address-space fragmentation never refuses memory the device has: with
/// 200 MiB in use in two islands of a 1 GiB device, 600 MiB fit.
#[test]
fn d_a_second_reservation_when_address_space_is_fragmented() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let mut xs: Vec<_> = (0..10).map(|_| Some(must_fit!(a, 100 * MIB, S0))).collect();
    for (i, x) in xs.iter_mut().enumerate() {
        if i != 3 && i != 7 {
            x.take();
        }
    }
    let _big = must_fit!(a, 600 * MIB, S0);
    a.validate().unwrap();
}

/// (e) After the ladder synchronises, other streams' now-idle cache is
/// searched: the first request succeeds, not only an identical retry.
#[test]
fn e_idle_cache_of_other_streams_after_the_sync() {
    let sim = SimBackend::without_vm(60 * MIB);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), cfg("expandable_segments:false"));
    // stream 1: a 20 MiB segment holding [5 free][5 in use][10 free]
    let first = must_fit!(a, 5 * MIB, S1);
    let mid = must_fit!(a, 5 * MIB, S1);
    drop(first);
    // stream 0 fills the device
    let _fill = must_fit!(a, 40 * MIB, S0);
    sim.launch_using(S1, &[(mid.ptr().0, mid.capacity())]);
    let got = must_fit!(a, 8 * MIB, S0);
    sim.check_handout(S0, got.ptr(), got.capacity());
}

/// The 65,537th distinct stream is its own stream: it is never handed the
/// cached block of stream 0 while stream 0 is busy.
#[test]
fn streams_beyond_u16_do_not_alias() {
    let sim = SimBackend::without_vm(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), cfg("expandable_segments:false"));
    let b0 = must_fit!(a, 1000, S0);
    sim.launch_using(S0, &[(b0.ptr().0, b0.capacity())]);
    drop(b0);
    // register streams 1..=65535 (record_stream registers a stream)
    let holders: Vec<_> = (0..256).map(|_| must_fit!(a, 1000, S1)).collect();
    for i in 1..=65535u32 {
        holders[i as usize % 256].record_stream(SimStream(i));
    }
    let late = SimStream(65_536);
    let mut keep = Vec::new();
    for _ in 0..2 {
        let b = must_fit!(a, 1000, late);
        sim.check_handout(late, b.ptr(), b.capacity());
        keep.push(b);
    }
    sim.complete_all();
}

/// A forgotten stream's handle can come back as a new stream: it starts with
/// nothing of the old one's, and the old one's idle cache is reused.
#[test]
fn forgotten_streams_are_forgotten() {
    let sim = SimBackend::without_vm(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), cfg("expandable_segments:false"));
    let p = must_fit!(a, 1000, S1).ptr();
    sim.launch(S1);
    assert_eq!(a.stream_count(), 1);
    a.forget_stream(S1);
    assert!(!sim.busy(S1), "forgetting a stream waits for its work");
    assert_eq!(a.stream_count(), 0);
    let b = must_fit!(a, 1000, S0);
    assert_eq!(b.ptr(), p, "the forgotten stream's idle cache is reused");
    let again = must_fit!(a, 1000, S1);
    assert_ne!(again.ptr(), p);
    assert_eq!(a.stream_count(), 2, "S1 came back as a new stream");
    a.validate().unwrap();
}

/// A stream per request, forgotten after it: the registry keeps as many
/// slots as streams alive at once (the retired slot is reused), cached
/// memory stays bounded, and the in-flight oracle sees no unsafe reuse.
#[test]
fn a_stream_per_request_keeps_the_registry_bounded() {
    for cfg_s in ["", "expandable_segments:false"] {
        let sim = SimBackend::new(1 << 30);
        sim.set_auto_complete(false);
        let a = CachingAllocator::new(sim.clone(), cfg(cfg_s));
        let long = SimStream(1_000_000);
        let _kept = must_fit!(a, 4096, long);
        for i in 0..20_000u32 {
            let s = SimStream(i);
            let x = must_fit!(a, 1000, s);
            let y = must_fit!(a, 3 * MIB, s);
            sim.check_handout(s, x.ptr(), x.capacity());
            sim.check_handout(s, y.ptr(), y.capacity());
            sim.launch_using(s, &[(x.ptr().0, x.capacity()), (y.ptr().0, y.capacity())]);
            drop((x, y));
            a.forget_stream(s);
        }
        assert_eq!(a.stream_count(), 1, "{cfg_s}");
        // the long-lived stream, the per-request slot and the orphan slot
        assert!(a.stream_slots() <= 3, "{cfg_s}: {} slots", a.stream_slots());
        assert!(
            a.stats().reserved_bytes.all.peak <= 64 * MIB as i64,
            "{cfg_s}: reserved peak {}",
            a.stats().reserved_bytes.all.peak
        );
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
        a.validate().unwrap();
        // the cache of the forgotten streams is labelled as theirs, not as
        // the first forgotten stream's
        let snap = a.snapshot();
        assert!(
            snap.segments
                .iter()
                .flat_map(|s| &s.blocks)
                .any(|b| b.stream == alloc_core::snapshot::FORGOTTEN_STREAMS),
            "{cfg_s}: no block labelled {:?}",
            alloc_core::snapshot::FORGOTTEN_STREAMS
        );
        assert!(
            !snap
                .segments
                .iter()
                .flat_map(|s| &s.blocks)
                .any(|b| b.stream == format!("{:?}", SimStream(0))),
            "{cfg_s}: a block still labelled with the first forgotten stream"
        );
    }
}

/// A buffer of a forgotten stream, used on another stream and freed after
/// the slot went to a new stream, waits for that other stream's work.
#[test]
fn a_reused_slot_does_not_skip_recorded_uses() {
    let sim = SimBackend::without_vm(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), cfg("expandable_segments:false"));
    let (s2, s3) = (SimStream(2), SimStream(3));
    let x = must_fit!(a, 1000, S1);
    a.forget_stream(S1);
    // S1's slot goes to s3
    let first = must_fit!(a, 1000, s3);
    x.record_stream(s2);
    sim.launch_using(s2, &[(x.ptr().0, x.capacity())]);
    let p = x.ptr();
    drop(x);
    for _ in 0..4 {
        let y = must_fit!(a, 1000, s3);
        sim.check_handout(s3, y.ptr(), y.capacity());
        assert_ne!(y.ptr(), p, "handed to s3 while s2's work uses it");
    }
    sim.complete(s2);
    let y = must_fit!(a, 1000, s3);
    sim.check_handout(s3, y.ptr(), y.capacity());
    drop((first, y));
    a.validate().unwrap();
}

#[test]
fn num_device_alloc_counts_every_map() {
    let sim = SimBackend::new(1 << 30);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    let x = must_fit!(a, 30 * MIB, S0);
    let y = must_fit!(a, 300 * MIB, S0);
    drop((x, y));
    a.empty_cache();
    let s = a.stats();
    let (obtains, returns) = sim.driver_calls();
    assert!(s.num_device_alloc >= 1);
    assert_eq!(
        (s.num_device_alloc, s.num_device_free),
        (obtains as i64, returns as i64)
    );
}

#[test]
fn requested_bytes_drop_when_the_free_completes() {
    let sim = SimBackend::new(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    let b = must_fit!(a, 1000, S0);
    b.record_stream(S1);
    sim.launch(S1);
    drop(b);
    let s = a.stats();
    assert_eq!(
        s.allocated_bytes.all.current, 0,
        "allocated drops at the request"
    );
    assert_eq!(
        s.requested_bytes.all.current, 1000,
        "requested waits for stream 1"
    );
    assert_eq!(s.active_bytes.all.current, 1024);
    sim.complete(S1);
    a.trim();
    assert_eq!(a.stats().requested_bytes.all.current, 0);
    assert_eq!(a.stats().active_bytes.all.current, 0);
}

#[test]
fn inactive_split_excludes_expandable_blocks() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let _x = must_fit!(a, 1000, S0);
    let s = a.stats();
    assert_eq!(s.inactive_split.all.current, 0);
    assert_eq!(s.inactive_split_bytes.all.current, 0);
    let f = CachingAllocator::new(SimBackend::new(1 << 30), cfg("expandable_segments:false"));
    let _x = must_fit!(f, 1000, S0);
    assert_eq!(f.stats().inactive_split.all.current, 1);
}

#[test]
fn oversize_counters_follow_max_split_size() {
    let a = CachingAllocator::new(
        SimBackend::new(1 << 30),
        cfg("expandable_segments:false,max_split_size_mb:20"),
    );
    let x = must_fit!(a, 30 * MIB, S0);
    let _y = must_fit!(a, 5 * MIB, S0);
    let s = a.stats();
    assert_eq!(s.oversize_allocations.current, 1, "5 MiB is below 20 MiB");
    assert_eq!(
        s.oversize_segments.current, 2,
        "30 MiB and the 5 MiB request's 20 MiB"
    );
    drop(x);
    let m = a.stats().to_map();
    assert_eq!(m["oversize_allocations.current"], 0);
    assert_eq!(m["oversize_allocations.peak"], 1);
    assert_eq!(
        m["oversize_segments.current"], 2,
        "cached segments still count"
    );
}

#[test]
fn allocate_zero_counts_nothing() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let z = a.allocate(0, S0).unwrap();
    assert_eq!((z.len(), z.capacity()), (0, 0));
    let s = a.stats();
    assert_eq!(s.allocation.all.current, 0);
    assert_eq!(s.allocated_bytes.all.current, 0);
    assert_eq!(s.reserved_bytes.all.current, 0);
    drop(z);
    assert_eq!(a.stats().allocation.all.freed, 0);
}

/// PyTorch's `should_split` tests the request's size against
/// `max_split_size`: a 5 MiB request splits its 20 MiB segment.
#[test]
fn should_split_tests_the_request() {
    let a = CachingAllocator::new(
        SimBackend::new(1 << 30),
        cfg("expandable_segments:false,max_split_size_mb:20"),
    );
    let x = must_fit!(a, 5 * MIB, S0);
    assert_eq!(x.capacity(), 5 * MIB);
    let y = must_fit!(a, 5 * MIB, S0);
    assert_eq!(y.ptr(), DevicePtr(x.ptr().0 + 5 * MIB));
}

/// `roundup_power2_divisions` picks its interval with floor(log2(size)), as
/// PyTorch does: 1.1 MiB lies in the [1, 2) MiB interval.
#[test]
fn roundup_interval_uses_floor_log2() {
    let a = CachingAllocator::new(
        SimBackend::new(1 << 30),
        cfg("roundup_power2_divisions:[1:1,2:4,>:4]"),
    );
    let x = must_fit!(a, 1_153_434, S0);
    assert_eq!(
        x.capacity(),
        1_153_536,
        "512 B rounding in the 1 MiB interval"
    );
    let y = must_fit!(a, 2_300_000, S0);
    assert_eq!(y.capacity(), 5 * MIB / 2, "quarters in the 2 MiB interval");
}

/// The remedy names the cap only when the cap, not the device, refused.
#[test]
fn oom_remedy_names_the_limit_that_refused() {
    let a = CachingAllocator::new(SimBackend::new(100 * MIB), cfg("max_reserved_mb:1000"));
    let e = a.allocate(200 * MIB, S0).unwrap_err();
    let remedy = &e.as_oom().unwrap().remedy;
    assert!(!remedy.contains("max_reserved_mb"), "{remedy}");
    let a = CachingAllocator::new(SimBackend::new(1 << 30), cfg("max_reserved_mb:100"));
    let e = a.allocate(200 * MIB, S0).unwrap_err();
    let remedy = &e.as_oom().unwrap().remedy;
    assert!(remedy.contains("max_reserved_mb"), "{remedy}");
    assert_eq!(a.check_oom_legitimate(200 * MIB), Ok(()));
}
