//! Whole-process run under the floor of our design (`alloc_benches::block_owner`):
//! an owner kept per block, alloc-host's placement, and nothing else.
//! Usage: `wp_block_scope [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: alloc_benches::block_owner::BlockOwner = alloc_benches::block_owner::BlockOwner;

fn main() {
    use alloc_benches::workload::*;
    run_with(
        threads_from_args(),
        &workload_from_args(),
        &alloc_benches::block_owner::BlockScopes,
    )
    .print();
}
