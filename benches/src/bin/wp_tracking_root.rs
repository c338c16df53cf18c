//! Whole-process run under alloc-host, tracking on, no scope opened.
#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

fn main() {
    use alloc_benches::workload::*;
    println!("{}", run(threads_from_args(), Scoping::None));
    let p = alloc_host::process_stats();
    eprintln!(
        "process: {} allocations, peak {}",
        p.allocations,
        alloc_host::format_bytes(p.peak_bytes)
    );
}
