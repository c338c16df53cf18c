//! The caching engine in a few lines: an engine over real host memory, a few
//! buffers, a scope that reports their device bytes, the statistics, the
//! summary table and the snapshot.
//!
//! `cargo run -p alloc-core --example device_quickstart`

use alloc_core::{CachingAllocator, Config, HostBackend};
use alloc_scope as scope;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // PyTorch-style settings; `CachingAllocator::from_env` reads ALLOC_CONF.
    let config = Config::parse("max_split_size_mb:256,trace_buffer_entries:64")?;
    let engine = CachingAllocator::new(HostBackend::new(), config);

    let request = scope::scope("request-1");
    let weights = engine.allocate(48 << 20, ())?; // large pool
    let bias = engine.allocate(3000, ())?; // small pool, rounded to 3072 B
    println!(
        "weights at {:#x} ({} B), bias at {:#x} ({} B for {} asked)",
        weights.ptr().addr(),
        weights.capacity(),
        bias.ptr().addr(),
        bias.capacity(),
        bias.len()
    );
    let s = request.stats();
    println!(
        "scope request-1: device live {} B, peak {} B",
        s.device.live_bytes, s.device.peak_bytes
    );
    drop(request);

    drop(bias); // back to the cache, not to the backend
    let again = engine.allocate(2000, ())?; // a cache hit
    println!("cache hit reuses {:#x}", again.ptr().addr());

    let stats = engine.stats();
    println!(
        "efficiency so far {:.3}; torch keys: reserved_bytes.all.current = {}",
        stats.efficiency(),
        stats.to_map()["reserved_bytes.all.current"]
    );
    print!("{}", engine.memory_summary());
    drop((weights, again));
    engine.empty_cache();
    let snap = engine.snapshot();
    println!(
        "after empty_cache: {} segments; trace has {} entries",
        snap.segments.len(),
        engine.trace().len()
    );
    engine.validate()?;
    Ok(())
}
