//! Whole-process run under alloc-host with a scope entered on every thread;
//! frees are charged back to the scope that allocated.
#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

fn main() {
    use alloc_benches::workload::*;
    println!("{}", run(threads_from_args(), Scoping::Scope));
    let p = alloc_host::process_stats();
    eprintln!(
        "process: {} allocations, peak {}",
        p.allocations,
        alloc_host::format_bytes(p.peak_bytes)
    );
}
