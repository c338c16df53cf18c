//! Whole-process run under the system allocator.
#[global_allocator]
static A: std::alloc::System = std::alloc::System;

fn main() {
    use alloc_benches::workload::*;
    println!("{}", run(threads_from_args(), Scoping::None));
}
