//! Whole-process run under alloc-host with tracking switched off.
#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

fn main() {
    use alloc_benches::workload::*;
    alloc_host::set_tracking(false);
    println!("{}", run(threads_from_args(), Scoping::None));
}
