//! Whole-process run under alloc-host built with `starting_off`: tracking
//! off from the first allocation and never switched on (a binary that links
//! tracking in and enables it only when asked).
//! Usage: `wp_tracking_start_off [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new().starting_off();

fn main() {
    use alloc_benches::workload::*;
    run_workload(threads_from_args(), &workload_from_args(), Scoping::None).print();
}
