//! Whole-process run under the `stats_alloc` crate (global atomic counters over
//! the system allocator, as it ships on stable Rust).
#[global_allocator]
static A: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn main() {
    use alloc_benches::workload::*;
    println!("{}", run(threads_from_args(), Scoping::None));
    eprintln!("allocations: {}", A.stats().allocations);
}
