//! Whole-process run under the system allocator.
//! Usage: `wp_system [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: std::alloc::System = std::alloc::System;

fn main() {
    use alloc_benches::workload::*;
    run_workload(threads_from_args(), &workload_from_args(), Scoping::None).print();
}
