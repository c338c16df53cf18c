//! Whole-process run under alloc-host with a scope per request (as
//! `wp_tracking_scope`) and heap sampling on: the mean interval from
//! `ALLOC_PROFILE_RATE` (bytes; `0`: off), 512 KiB when unset. Prints the
//! samples taken and the table's fill on stderr.
//! Usage: `wp_tracking_profile [THREADS] [WORKLOAD]`.
#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

fn main() {
    use alloc_benches::workload::*;
    if std::env::var_os(alloc_host::profile::RATE_ENV).is_none() {
        alloc_host::set_sample_rate(alloc_host::profile::DEFAULT_MEAN);
    }
    run_workload(threads_from_args(), &workload_from_args(), Scoping::Scope).print();
    let c = alloc_host::profile::counts();
    eprintln!(
        "profile: rate {} B, {} samples, {} stacks, {} live, {} dropped; table {} B",
        alloc_host::profile::sample_rate(),
        c.samples,
        c.stacks,
        c.live,
        c.dropped,
        alloc_host::profile::TABLE_BYTES
    );
}
