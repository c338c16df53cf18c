//! Whole-process run under the `stats_alloc` crate (global atomic counters over
//! the system allocator, as it ships on stable Rust).
//! Usage: `wp_stats_alloc [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn main() {
    use alloc_benches::workload::*;
    run_workload(threads_from_args(), &workload_from_args(), Scoping::None).print();
    eprintln!("allocations: {}", A.stats().allocations);
}
