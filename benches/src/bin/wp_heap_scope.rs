//! Whole-process run under the owner-per-heap design (`alloc_benches::heap_owner`):
//! a mimalloc heap per scope, the owner of a block read from its page.
//! Usage: `wp_heap_scope [THREADS] [WORKLOAD]` (workloads: `alloc_benches::workload`).
//! Prints `metric heaps_made` and `metric heaps_pinned` besides the workload's.
#[global_allocator]
static A: alloc_benches::heap_owner::HeapOwner = alloc_benches::heap_owner::HeapOwner;

fn main() {
    use alloc_benches::heap_owner::{HeapScopes, heaps};
    use alloc_benches::workload::*;
    let mut out = run_with(
        threads_from_args(),
        &workload_from_args(),
        &HeapScopes::new(),
    );
    let (made, pinned) = heaps();
    out.metrics.push(("heaps_made".into(), made as f64));
    out.metrics.push(("heaps_pinned".into(), pinned as f64));
    out.print();
}
