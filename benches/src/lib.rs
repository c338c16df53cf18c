//! Benchmarks of the workspace: criterion benches in `benches/`, and the
//! whole-process comparison (`src/bin/wp_*.rs`: one binary per global allocator,
//! all running [`workload::run`]). Figures and commands: `RESULTS.md`.

pub mod block_owner;
pub mod heap_owner;
pub mod sites;
pub mod workload;
