//! Whole-process run under bare mimalloc.
//! Usage: `wp_mimalloc [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    use alloc_benches::workload::*;
    run_workload(threads_from_args(), &workload_from_args(), Scoping::None).print();
}
