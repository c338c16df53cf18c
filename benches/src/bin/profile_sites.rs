//! The heap profile's accuracy on the known-sites program
//! (`alloc_benches::sites`) at the default rate: shares of the three sites in
//! the allocated and in-use profiles against the exact figures.
//! Usage: `profile_sites [TOTAL_MIB]` (default 4096).
#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

use alloc_benches::sites::{SITES, run, shares};
use alloc_host::profile::{DEFAULT_MEAN, Filter, Kind, profile_filtered};

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4096);
    alloc_host::set_sample_rate(DEFAULT_MEAN);
    let t0 = std::time::Instant::now();
    let (exact, blocks) = {
        let _g = alloc_host::scope("sites");
        run(mib << 20)
    };
    let secs = t0.elapsed().as_secs_f64();
    let c = alloc_host::profile::counts();
    println!(
        "table: {} samples, {} stacks, {} live, {} dropped",
        c.samples, c.stacks, c.live, c.dropped
    );
    for (kind, want) in [
        (Kind::Allocated, exact.allocated),
        (Kind::InUse, exact.in_use),
    ] {
        let p = profile_filtered(kind, Filter::Name("sites".into()));
        let sites = p.top_sites(20);
        let got = SITES.map(|n| {
            sites
                .iter()
                .filter(|s| s.function.ends_with(n))
                .map(|s| s.bytes)
                .sum::<f64>()
        });
        let g = shares(got);
        let w = shares(want.map(|v| v as f64));
        let total: u64 = want.iter().sum();
        // SE of a share q from B bytes at mean m (blocks ≪ m): √(q(1−q)·m/B).
        let se = w.map(|q| {
            100.0 * ((q / 100.0) * (1.0 - q / 100.0) * DEFAULT_MEAN as f64 / total as f64).sqrt()
        });
        println!(
            "{:<5} exact {:5.2} {:5.2} {:5.2} % | profile {:5.2} {:5.2} {:5.2} % | SE {:.2} {:.2} {:.2} points | est. {:.1} MiB of {:.1} MiB, {} samples",
            kind.as_str(),
            w[0],
            w[1],
            w[2],
            g[0],
            g[1],
            g[2],
            se[0],
            se[1],
            se[2],
            p.total_bytes() / 1048576.0,
            total as f64 / 1048576.0,
            p.samples.iter().map(|s| s.samples).sum::<u64>()
        );
    }
    println!("run {secs:.2} s (sampling at {} B)", DEFAULT_MEAN);
    drop(blocks);
}
