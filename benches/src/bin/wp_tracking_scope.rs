//! Whole-process run under alloc-host with a scope entered on every thread;
//! frees are charged back to the scope that allocated, and a fresh scope
//! (`alloc_host::scope("request")`) opened per request.
//! Usage: `wp_tracking_scope [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

fn main() {
    use alloc_benches::workload::*;
    run_workload(threads_from_args(), &workload_from_args(), Scoping::Scope).print();
    let p = alloc_host::process_stats();
    eprintln!(
        "process: {} allocations, peak {}",
        p.allocations,
        alloc_host::format_bytes(p.peak_bytes)
    );
}
