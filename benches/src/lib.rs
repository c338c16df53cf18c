//! Benchmarks of the workspace (see RESULTS.md).
