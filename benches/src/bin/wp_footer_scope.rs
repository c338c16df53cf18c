//! Whole-process run with the owner in a 4-byte footer of every block
//! (`alloc_benches::block_owner::FooterOwner`): the cheapest owner per block
//! in instructions, paid for in memory at size classes.
//! Usage: `wp_footer_scope [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
#[global_allocator]
static A: alloc_benches::block_owner::FooterOwner = alloc_benches::block_owner::FooterOwner;

fn main() {
    use alloc_benches::workload::*;
    run_with(
        threads_from_args(),
        &workload_from_args(),
        &alloc_benches::block_owner::BlockScopes,
    )
    .print();
}
