//! Opens the caching allocator on CUDA device 0 (or the ordinal given as the
//! first argument) and prints what it found, and which driver library is
//! mapped (exactly one is expected). Without a CUDA driver it prints the
//! error and exits with status 1.
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
    match libcuda_mapped() {
        Some(paths) if paths.len() == 1 => println!("libcuda mapped: {}", paths[0]),
        Some(paths) => {
            eprintln!(
                "error: {} driver libraries mapped ({}); exactly one is expected",
                paths.len(),
                paths.join(", ")
            );
            return ExitCode::FAILURE;
        }
        None => println!("libcuda mapped: unknown (no /proc/self/maps)"),
    }
    ExitCode::SUCCESS
}

/// The distinct files named `libcuda.so*` mapped into this process, from
/// `/proc/self/maps` (`None` where it cannot be read).
fn libcuda_mapped() -> Option<Vec<String>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with("libcuda.so"))
        })
        .map(str::to_string)
        .collect();
    paths.sort();
    paths.dedup();
    Some(paths)
}
