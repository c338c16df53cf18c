//! Opens the caching allocator on CUDA device 0 (or the ordinal given as the
//! first argument) and prints what it found. Without a CUDA driver it prints
//! the error and exits with status 1.
//!
//! ```text
//! cargo run -p alloc-cuda --example cuda_info [-- ORDINAL]
//! ```

use std::process::ExitCode;

use alloc_core::DeviceBackend;
use alloc_cuda::CudaAllocator;

fn main() -> ExitCode {
    let ordinal = match std::env::args().nth(1).map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("error: the device ordinal must be a number: {e}");
            return ExitCode::from(2);
        }
    };
    let alloc = match CudaAllocator::new(ordinal) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = alloc
        .context()
        .name()
        .unwrap_or_else(|e| format!("unknown ({e:?})"));
    println!("device {ordinal}: {name}");
    match alloc.backend().mem_info() {
        Some(m) => println!("memory: {} B free of {} B", m.free, m.total),
        None => println!("memory: unknown"),
    }
    match alloc.backend().vm_unavailable_reason() {
        None => println!(
            "expandable segments: available (page {} B), in use: {}",
            alloc.backend().page_size().unwrap_or(0),
            alloc.uses_expandable_segments()
        ),
        Some(why) => println!("expandable segments: unavailable: {why}"),
    }
    let stream = alloc.context().default_stream();
    match alloc.allocate(64 << 20, &stream) {
        Ok(b) => println!("allocated {} B at {:#x}", b.byte_len(), b.device_address()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    print!("{}", alloc.memory_summary());
    ExitCode::SUCCESS
}
