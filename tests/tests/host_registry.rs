//! Long-running processes: closed scopes that still own memory do not pin
//! their registry slot; per-name aggregates survive the scopes; a million
//! per-request scopes in a row work in bounded memory. Harness-free: it fills
//! the process-wide registry.

use alloc_host::{
    CAPACITY, ScopeBuilder, ScopeHandle, TrackingAllocator, aggregate, process_stats,
    registry_stats, scope, scope_tree, untracked,
};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

fn retired() -> alloc_host::ScopeStats {
    scope_tree()
        .scopes
        .into_iter()
        .find(|n| n.stats.name == "retired")
        .expect("retired is a fixed scope")
        .stats
}

fn main() {
    closed_scopes_owning_memory_recycle_into_retired();
    a_million_request_scopes_in_bounded_memory();
    a_full_registry_is_never_silent();
    println!("test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn closed_scopes_owning_memory_recycle_into_retired() {
    const N: usize = CAPACITY + 4000;
    let server = ScopeBuilder::new("server").build().unwrap();
    let mut cache: Vec<Box<[u8; 48]>> = untracked(|| Vec::with_capacity(N));
    let before = process_stats();
    for _ in 0..N {
        let g = ScopeBuilder::new("request")
            .child_of(&server)
            .enter()
            .expect("a slot is always found: closed owners recycle");
        cache.push(Box::new([7u8; 48])); // outlives its request
        drop(g);
    }
    let r = registry_stats();
    assert!(r.recycled >= (N - CAPACITY) as u64, "{r:?}");
    assert_eq!(r.not_created, 0, "{r:?}");
    let moved = retired();
    assert_eq!(moved.live_bytes, moved.live_allocations * 48);
    assert!(moved.live_allocations >= (N - CAPACITY) as u64, "{moved:?}");
    // The server keeps the blocks of requests not recycled; together with
    // `retired` they are all the cache.
    let s = server.stats();
    assert_eq!(
        s.live_bytes + moved.live_bytes,
        (N * 48) as u64,
        "{s:?} {moved:?}"
    );
    alloc_scope::validate().unwrap();
    // Frees of recycled owners go to `retired`, the others to their request.
    drop(cache);
    assert_eq!(retired().live_bytes, 0);
    assert_eq!(server.stats().live_bytes, 0);
    let after = process_stats();
    assert_eq!(after.live_bytes, before.live_bytes);
    alloc_scope::validate().unwrap();
    let agg = aggregate("request").unwrap();
    assert_eq!(agg.closed, N as u64);
    assert_eq!(agg.host_peak.max, 48);
}

fn a_million_request_scopes_in_bounded_memory() {
    let rss = |()| alloc_host::process_stats().live_bytes;
    let base = rss(());
    let before = aggregate("req").map_or(0, |a| a.closed);
    for i in 0..1_000_000u32 {
        let g = scope("req");
        std::hint::black_box(vec![0u8; 1 + (i % 4096) as usize]);
        drop(g);
    }
    let r = registry_stats();
    assert!(r.in_use < 64, "{r:?}");
    let a = aggregate("req").unwrap();
    assert_eq!(a.closed - before, 1_000_000);
    assert_eq!(a.host_peak.max, 4096);
    let p99 = a.host_peak.quantile(0.99);
    assert!((2048..=4096).contains(&p99), "p99 {p99}");
    assert!(
        rss(()) <= base + (1 << 20),
        "live bytes grew: {} -> {}",
        base,
        rss(())
    );
}

fn a_full_registry_is_never_silent() {
    // Hold CAPACITY open scopes: the next one cannot be created.
    let mut open: Vec<ScopeHandle> = untracked(|| Vec::with_capacity(CAPACITY));
    loop {
        match ScopeBuilder::new("held").build() {
            Ok(h) => open.push(h),
            Err(e) => {
                assert!(
                    e.to_string().contains("scope slots hold open scopes"),
                    "{e}"
                );
                break;
            }
        }
    }
    let g = scope("one too many");
    assert!(g.is_fallback());
    drop(g);
    assert!(registry_stats().not_created >= 2);
    let measured = std::panic::catch_unwind(|| alloc_host::testing::measure("full", || 1));
    assert!(
        measured.is_err(),
        "measure must refuse to report the parent's figures"
    );
    drop(open);
    assert!(!scope("fits again").is_fallback());
}
