//! Whole-process run under alloc-host with tracking switched off.
//! Usage: `wp_tracking_off [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

fn main() {
    use alloc_benches::workload::*;
    alloc_host::set_tracking(false);
    run_workload(threads_from_args(), &workload_from_args(), Scoping::None).print();
}
