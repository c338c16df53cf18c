//! Behaviour of the caching engine on the simulated and host backends.

use alloc_core::adaptors::FaultInjectingBackend;
use alloc_core::{
    AllocError, CachingAllocator, Config, DeviceBackend, HostBackend, MemInfo, SimBackend,
    SimStream,
};

const S0: SimStream = SimStream(0);
const S1: SimStream = SimStream(1);
const MIB: usize = 1 << 20;

fn fixed() -> Config {
    Config::parse("expandable_segments:false").unwrap()
}

#[test]
fn cache_hit_reuses_the_block_and_counts_exactly() {
    let sim = SimBackend::new(1 << 30);
    let a = CachingAllocator::new(sim.clone(), fixed());
    let p = {
        let b = a.allocate(1000, S0).unwrap();
        assert_eq!(b.capacity(), 1024);
        assert_eq!(b.len(), 1000);
        b.ptr()
    };
    let b = a.allocate(700, S0).unwrap();
    assert_eq!(
        b.ptr(),
        p,
        "a freed small block is reused by the same stream"
    );
    let s = a.stats();
    assert_eq!(s.num_device_alloc, 1);
    assert_eq!(s.segment.small_pool.current, 1);
    assert_eq!(s.reserved_bytes.all.current, 2 * MIB as i64);
    assert_eq!(s.allocated_bytes.all.current, 1024);
    assert_eq!(s.requested_bytes.all.current, 700);
    assert_eq!(s.requested_bytes.all.peak, 1000);
    assert_eq!(s.inactive_split.small_pool.current, 1);
    a.validate().unwrap();
    let m = s.to_map();
    assert_eq!(m["allocated_bytes.all.current"], 1024);
    assert_eq!(m["segment.small_pool.current"], 1);
    assert_eq!(m["num_device_alloc"], 1);
}

#[test]
fn segment_sizes_follow_the_pytorch_rule() {
    let sim = SimBackend::new(1 << 30);
    let a = CachingAllocator::new(sim.clone(), fixed());
    let _s = a.allocate(100, S0).unwrap();
    let _l = a.allocate(11 * MIB + 1, S0).unwrap();
    let _m = a.allocate(3 * MIB, S0).unwrap();
    assert_eq!(
        a.stats().reserved_bytes.all.current as usize,
        2 * MIB + 20 * MIB + 12 * MIB
    );
    assert_eq!(sim.used(), 34 * MIB);
}

#[test]
fn split_blocks_merge_back_on_free() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), fixed());
    let x = a.allocate(4 * MIB, S0).unwrap();
    let y = a.allocate(4 * MIB, S0).unwrap();
    assert_eq!(
        y.ptr().0,
        x.ptr().0 + 4 * MIB,
        "the second block is split from the same segment"
    );
    drop(x);
    drop(y);
    a.validate().unwrap();
    let snap = a.snapshot();
    assert_eq!(snap.segments.len(), 1);
    assert_eq!(
        snap.segments[0].blocks.len(),
        1,
        "free neighbours merged: {:?}",
        snap.segments[0].blocks
    );
    assert!(snap.to_json().contains("\"state\": \"free\""));
}

#[test]
fn max_split_size_keeps_oversize_blocks_whole() {
    let a = CachingAllocator::new(
        SimBackend::new(1 << 30),
        Config::parse("expandable_segments:false,max_split_size_mb:20").unwrap(),
    );
    drop(a.allocate(64 * MIB, S0).unwrap());
    let small = a.allocate(2 * MIB, S0).unwrap();
    let s = a.stats();
    assert_eq!(
        s.num_device_alloc, 2,
        "a 2 MiB request must not split the 64 MiB oversize block"
    );
    drop(small);
    let big = a.allocate(60 * MIB, S0).unwrap();
    assert_eq!(
        big.capacity(),
        64 * MIB,
        "an oversize request takes the whole oversize block"
    );
    a.validate().unwrap();
}

#[test]
fn expandable_segments_map_pages_and_unmap_on_empty_cache() {
    let sim = SimBackend::new(1 << 30);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    assert!(a.uses_expandable_segments());
    let x = a.allocate(30 * MIB, S0).unwrap();
    let y = a.allocate(30 * MIB, S0).unwrap();
    assert_eq!(
        y.ptr().0,
        x.ptr().0 + 30 * MIB,
        "expandable segments grow in place"
    );
    let s = a.stats();
    assert_eq!(
        s.num_device_alloc, s.num_device_map,
        "each map is a device allocation"
    );
    assert!(s.num_device_map >= 1 && s.reserved_bytes.all.current as usize >= 60 * MIB);
    drop(x);
    drop(y);
    a.empty_cache();
    a.validate().unwrap();
    assert_eq!(a.stats().reserved_bytes.all.current, 0);
    assert_eq!(sim.used(), 0);
    assert_eq!(sim.live_regions(), 0);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
fn oom_error_states_the_numbers_and_a_remedy() {
    let sim = SimBackend::without_vm(64 * MIB);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen2 = seen.clone();
    a.add_oom_observer(move |o| {
        assert_eq!(o.requested, 100 * MIB);
        seen2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let _keep = a.allocate(30 * MIB, S0).unwrap();
    let e = a.allocate(100 * MIB, S0).unwrap_err();
    let o = e.as_oom().expect("out of memory");
    assert_eq!(o.rounded, 100 * MIB);
    assert_eq!(o.in_use, 30 * MIB);
    assert_eq!(o.device_total, Some(64 * MIB));
    let msg = e.to_string();
    assert!(
        msg.contains("requested 100.00 MiB")
            && msg.contains("30.00 MiB in use")
            && msg.contains("free of 64.00 MiB"),
        "{msg}"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    let s = a.stats();
    assert_eq!(s.num_ooms, 1);
    assert!(s.num_alloc_retries >= 1);
    a.validate().unwrap();
}

#[test]
fn reclaim_ladder_releases_cache_before_failing() {
    let sim = SimBackend::without_vm(64 * MIB);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    drop(a.allocate(40 * MIB, S0).unwrap());
    // 40 MiB are cached; 50 MiB only fit after releasing them.
    let b = a.allocate(50 * MIB, S0).unwrap();
    assert_eq!(b.capacity(), 50 * MIB);
    let s = a.stats();
    assert_eq!(
        (s.num_device_alloc, s.num_device_free, s.num_ooms),
        (2, 1, 0)
    );
    assert_eq!(s.num_sync_all_streams, 1);
}

#[test]
fn injected_backend_failure_is_recovered_or_reported() {
    let sim = SimBackend::new(1 << 30);
    let a = CachingAllocator::new(FaultInjectingBackend::new(sim.clone()), Config::default());
    a.backend().fail_next(1);
    let b = a
        .allocate(5 * MIB, S0)
        .expect("the ladder retries after one injected failure");
    drop(b);
    a.backend().fail_next_other(1);
    match a.allocate(500 * MIB, S0) {
        Err(AllocError::Backend { .. }) => {}
        other => panic!("expected a backend error, got {other:?}"),
    }
    sim.fail_nth_allocation(1);
    sim.fail_nth_allocation(2);
    sim.fail_nth_allocation(3);
    assert!(a.allocate(500 * MIB, S0).is_err());
    a.validate().unwrap();
}

#[test]
fn record_stream_defers_reuse_until_the_other_stream_completes() {
    let sim = SimBackend::new(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), fixed());
    let b = a.allocate(4096, S0).unwrap();
    let p = b.ptr();
    b.record_stream(S1);
    sim.launch(S1);
    drop(b);
    let s = a.stats();
    assert_eq!(s.allocation.all.current, 0);
    assert_eq!(s.active.all.current, 1, "the block waits for stream 1");
    let c = a.allocate(4096, S0).unwrap();
    assert_ne!(c.ptr(), p, "a pending block is not reused");
    sim.complete(S1);
    let d = a.allocate(4096, S0).unwrap();
    assert_eq!(
        d.ptr(),
        p,
        "after stream 1 completes the block is free again"
    );
    a.validate().unwrap();
}

#[test]
fn idle_cache_of_another_stream_is_reused_only_when_idle() {
    let sim = SimBackend::new(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), fixed());
    drop(a.allocate(8 * MIB, S0).unwrap());
    sim.launch(S0);
    let x = a.allocate(8 * MIB, S1).unwrap();
    assert_eq!(
        a.stats().num_device_alloc,
        2,
        "stream 0 is busy: its cache is not taken"
    );
    drop(x);
    drop(a.allocate(4 * MIB, S0).unwrap());
    sim.complete(S0);
    let _y = a.allocate(12 * MIB, SimStream(2)).unwrap();
    let s = a.stats();
    assert_eq!(
        s.num_device_alloc, 2,
        "stream 0 idle: its cached segment is reused"
    );
    assert_eq!(s.num_cross_stream_reuse, 1);
    a.validate().unwrap();
}

#[test]
fn trim_skips_busy_streams_and_empty_cache_waits() {
    let sim = SimBackend::new(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), fixed());
    drop(a.allocate(8 * MIB, S0).unwrap());
    sim.launch(S0);
    a.trim();
    assert_eq!(
        a.stats().reserved_bytes.all.current,
        20 * MIB as i64,
        "trim does not wait for stream 0"
    );
    a.empty_cache();
    assert_eq!(a.stats().reserved_bytes.all.current, 0);
    assert_eq!(sim.syncs(), 1);
}

#[test]
fn byte_cap_and_memory_fraction_bound_reserved() {
    let a = CachingAllocator::new(
        SimBackend::new(1 << 30),
        Config::parse("max_reserved_mb:64").unwrap(),
    );
    let _x = a.allocate(40 * MIB, S0).unwrap();
    let e = a.allocate(40 * MIB, S0).unwrap_err();
    assert!(e.to_string().contains("cap 64.00 MiB"), "{e}");
    let sim = SimBackend::new(1 << 30);
    sim.set_mem_info(Some(MemInfo {
        free: 100 * MIB,
        total: 100 * MIB,
    }));
    let b = CachingAllocator::new(
        sim,
        Config::parse("per_process_memory_fraction:0.5").unwrap(),
    );
    assert!(b.allocate(60 * MIB, S0).is_err());
    assert!(b.allocate(40 * MIB, S0).is_ok());
}

#[test]
fn reset_peak_and_accumulated() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    drop(a.allocate(10 * MIB, S0).unwrap());
    a.reset_peak();
    let s = a.stats();
    assert_eq!(s.allocated_bytes.all.peak, 0);
    assert_eq!(s.allocated_bytes.all.allocated, 10 * MIB as i64);
    a.reset_accumulated();
    assert_eq!(a.stats().allocated_bytes.all.allocated, 0);
    assert!(a.memory_summary().contains("reserved_bytes"));
}

#[test]
fn trace_ring_records_events_when_on() {
    let a = CachingAllocator::new(
        SimBackend::without_vm(1 << 30),
        Config::parse("trace_buffer_entries:4").unwrap(),
    );
    drop(a.allocate(100, S0).unwrap());
    let t = a.trace();
    let kinds: Vec<_> = t.iter().map(|e| format!("{:?}", e.action)).collect();
    assert_eq!(
        kinds,
        ["SegmentAlloc", "Alloc", "FreeRequested", "FreeCompleted"]
    );
    let off = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    drop(off.allocate(100, S0).unwrap());
    assert!(off.trace().is_empty());
}

#[test]
fn device_bytes_are_charged_to_the_scope() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let g = alloc_scope::scope("engine-test");
    let b = a.allocate(3000, S0).unwrap();
    assert_eq!(b.owner(), g.id());
    let during = g.stats();
    assert_eq!(during.device.live_bytes, 3072);
    drop(b);
    let after = g.stats();
    assert_eq!(after.device.live_bytes, 0);
    assert_eq!(after.device.peak_bytes, 3072);
}

#[test]
fn host_backend_memory_is_usable_in_both_modes() {
    for cfg in ["", "expandable_segments:false"] {
        let a = CachingAllocator::new(HostBackend::new(), Config::parse(cfg).unwrap());
        let bufs: Vec<_> = [100usize, 5 * MIB, 30 * MIB]
            .iter()
            .map(|&n| a.allocate(n, ()).unwrap())
            .collect();
        for b in &bufs {
            let p = b.ptr().0 as *mut u8;
            // SAFETY: the block is ours and holds `len()` writable host bytes.
            unsafe {
                p.write(7);
                p.add(b.len() - 1).write(9);
                assert_eq!(p.read() + p.add(b.len() - 1).read(), 16);
            }
        }
        drop(bufs);
        a.empty_cache();
        a.validate().unwrap();
        assert_eq!(a.stats().reserved_bytes.all.current, 0, "config `{cfg}`");
        assert!(a.backend().mem_info().is_some());
    }
}

#[test]
fn engine_is_send_sync_and_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CachingAllocator<SimBackend>>();
    assert_send_sync::<CachingAllocator<HostBackend>>();
    fn assert_send<T: Send>() {}
    assert_send::<alloc_core::DeviceBuffer<'static, SimBackend>>();
    assert_send::<alloc_core::DeviceBuffer<'static, HostBackend>>();
    let a = CachingAllocator::new(SimBackend::new(4 << 30), Config::default());
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let a = &a;
            s.spawn(move || {
                let mut v = Vec::new();
                for i in 0..2000usize {
                    v.push(
                        a.allocate((i * 7919 + t as usize) % (3 * MIB), SimStream(t))
                            .unwrap(),
                    );
                    if v.len() > 64 {
                        drop(v.swap_remove(i % v.len()));
                    }
                }
            });
        }
    });
    a.validate().unwrap();
    assert_eq!(a.stats().allocation.all.current, 0);
}

#[test]
fn config_from_env_and_errors() {
    // the only test touching ALLOC_CONF
    // SAFETY: no other test of this binary reads or writes the environment.
    unsafe {
        std::env::set_var(
            "ALLOC_CONF",
            "expandable_segments:false,garbage_collection_threshold:0.8",
        )
    };
    let c = Config::from_env().unwrap();
    assert_eq!(c.expandable_segments, Some(false));
    // SAFETY: as above.
    unsafe { std::env::set_var("ALLOC_CONF", "max_split_size_mb:abc") };
    let e = Config::from_env().unwrap_err().to_string();
    assert!(e.contains("max_split_size_mb") && e.contains("abc"), "{e}");
    // SAFETY: as above.
    unsafe { std::env::remove_var("ALLOC_CONF") };
    assert!(CachingAllocator::from_env(SimBackend::new(1 << 20)).is_ok());
    let _ = SimBackend::new(1).stream_for_id(3);
}

#[test]
fn garbage_collection_threshold_releases_cache_before_growing() {
    let cfg = "expandable_segments:false,max_reserved_mb:100,garbage_collection_threshold:0.5";
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::parse(cfg).unwrap());
    drop(a.allocate(40 * MIB, S0).unwrap());
    let _b = a.allocate(45 * MIB, S0).unwrap();
    let s = a.stats();
    assert_eq!(
        s.reserved_bytes.all.current,
        46 * MIB as i64,
        "the cached 40 MiB segment was released first"
    );
    assert_eq!(s.num_device_free, 1);
    let plain = CachingAllocator::new(
        SimBackend::new(1 << 30),
        Config::parse("expandable_segments:false,max_reserved_mb:100").unwrap(),
    );
    drop(plain.allocate(40 * MIB, S0).unwrap());
    let _c = plain.allocate(45 * MIB, S0).unwrap();
    assert_eq!(
        plain.stats().reserved_bytes.all.current,
        86 * MIB as i64,
        "without the threshold the cache is kept"
    );
}

#[test]
fn expandable_oom_recovers_after_free() {
    let sim = SimBackend::new(64 * MIB);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    let x = a.allocate(30 * MIB, S0).unwrap();
    let e = a.allocate(100 * MIB, S0).unwrap_err();
    let o = e.as_oom().expect("out of memory");
    assert_eq!((o.in_use, o.device_total), (30 * MIB, Some(64 * MIB)));
    a.validate().unwrap();
    drop(x);
    let y = a
        .allocate(60 * MIB, S0)
        .expect("after the free, 60 MiB fit by unmapping and remapping");
    assert_eq!(y.capacity(), 60 * MIB);
    a.validate().unwrap();
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
fn snapshot_shows_unmapped_pages_and_stats_export_every_torch_key() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let keep = a.allocate(3 * MIB, S0).unwrap();
    drop(a.allocate(30 * MIB, S0).unwrap());
    a.trim();
    let snap = a.snapshot();
    let json = snap.to_json();
    assert!(
        json.contains("\"state\": \"unmapped\"") && json.contains("\"large_pool\""),
        "{json}"
    );
    assert!(snap.segments.iter().all(|s| s.expandable));
    drop(keep);
    let m = a.stats().to_map();
    // the scalar counters: PyTorch's five and this engine's five
    // (num_front_cache_hits the last)
    assert_eq!(m.len(), 9 * 3 * 4 + 2 * 4 + 10);
    for k in [
        "allocation",
        "segment",
        "active",
        "inactive_split",
        "allocated_bytes",
        "reserved_bytes",
        "active_bytes",
        "inactive_split_bytes",
        "requested_bytes",
    ] {
        for p in ["all", "small_pool", "large_pool"] {
            for f in ["current", "peak", "allocated", "freed"] {
                assert!(m.contains_key(&format!("{k}.{p}.{f}")), "{k}.{p}.{f}");
            }
        }
    }
    for k in [
        "num_alloc_retries",
        "num_ooms",
        "num_sync_all_streams",
        "num_device_alloc",
        "num_device_free",
    ] {
        assert!(m.contains_key(k), "{k}");
    }
}

#[test]
fn expandable_segments_with_max_split_size_stay_bounded() {
    // pytorch#123548: with max_split_size, an oversize free block is never
    // split for smaller requests, so memory grows. Here the oversize block's
    // pages are split or unmapped and reused instead.
    let run = |cfg: &str| {
        let a = CachingAllocator::new(SimBackend::new(64 << 30), Config::parse(cfg).unwrap());
        for i in 0..20usize {
            drop(a.allocate((100 + 10 * i) * MIB, S0).unwrap());
            let small: Vec<_> = (0..8).map(|_| a.allocate(10 * MIB, S0).unwrap()).collect();
            drop(small);
        }
        a.validate().unwrap();
        a.stats().reserved_bytes.all.peak as usize
    };
    let largest = 290 * MIB;
    let expandable = run("max_split_size_mb:20");
    assert!(
        expandable <= largest + 40 * MIB,
        "reserved peak {} MiB",
        expandable / MIB
    );
    let fixed = run("expandable_segments:false,max_split_size_mb:20");
    assert!(
        fixed > 2 * largest,
        "fixed segments keep every oversize block: {} MiB",
        fixed / MIB
    );
}

#[test]
fn adaptors_limit_log_and_inject() {
    use alloc_core::adaptors::{BackendCall, LimitBackend, LoggingBackend};
    let stack = LoggingBackend::new(LimitBackend::new(SimBackend::new(1 << 30), 64 * MIB), 16);
    let a = CachingAllocator::new(stack, Config::default());
    let x = a.allocate(50 * MIB, S0).unwrap();
    assert!(
        a.allocate(50 * MIB, S0).is_err(),
        "the limit adaptor caps the device at 64 MiB"
    );
    assert_eq!(
        a.backend().inner().mem_info().map(|m| m.total),
        Some(64 * MIB)
    );
    drop(x);
    a.empty_cache();
    assert_eq!(
        a.backend().inner().used(),
        0,
        "everything obtained was given back"
    );
    let calls = a.backend().calls();
    assert!(
        matches!(calls.first(), Some(BackendCall::Map(_, _, true))),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| matches!(c, BackendCall::Unmap(..))),
        "{calls:?}"
    );

    let f = CachingAllocator::new(
        FaultInjectingBackend::new(SimBackend::without_vm(1 << 30)),
        fixed(),
    );
    f.backend().fail_nth(2);
    let _one = f.allocate(30 * MIB, S0).unwrap();
    let two = f.allocate(30 * MIB, S0);
    assert!(
        two.is_ok(),
        "the ladder retries after the injected failure: {two:?}"
    );
    assert_eq!(f.backend().calls(), 3);
    assert_eq!(f.stats().num_alloc_retries, 1);
}

#[test]
fn dropping_the_allocator_releases_every_segment() {
    let backend = alloc_core::SimBackend::new(1 << 30);
    for expandable in ["expandable_segments:true", "expandable_segments:false"] {
        let cfg = alloc_core::Config::parse(expandable).unwrap();
        let a = alloc_core::CachingAllocator::new(backend.clone(), cfg);
        let s = alloc_core::SimStream(0);
        let bufs: Vec<_> = [512, 3 << 20, 40 << 20]
            .iter()
            .map(|&n| a.allocate(n, s).unwrap())
            .collect();
        drop(bufs);
        assert!(backend.used() > 0, "{expandable}: segments stay cached");
        drop(a);
        assert_eq!(backend.used(), 0, "{expandable}: released on drop");
        assert_eq!(backend.live_regions(), 0);
    }
}
