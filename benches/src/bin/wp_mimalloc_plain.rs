//! Whole-process run under mimalloc called through its plain entry points
//! (`mi_malloc`, `mi_malloc_small`, `mi_free`, ...: `alloc_host::Mimalloc`, the
//! inner allocator of alloc-host), to separate what the `mimalloc` crate's
//! aligned entry points cost from what tracking costs.
//! Usage: `wp_mimalloc_plain [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: alloc_host::Mimalloc = alloc_host::Mimalloc;

fn main() {
    use alloc_benches::workload::*;
    run_workload(threads_from_args(), &workload_from_args(), Scoping::None).print();
}
