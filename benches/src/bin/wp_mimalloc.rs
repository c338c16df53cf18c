//! Whole-process run under bare mimalloc.
#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    use alloc_benches::workload::*;
    println!("{}", run(threads_from_args(), Scoping::None));
}
