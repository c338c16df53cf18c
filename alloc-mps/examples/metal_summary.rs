//! Opens the default Metal device, allocates on two streams, frees, and
//! prints the device's figures and the engine's summary:
//! `cargo run -p alloc-mps --example metal_summary`. Off Apple platforms it
//! prints why there is no Metal device and exits successfully.

use alloc_mps::{MetalAllocator, MetalError, MetalStream};

fn main() {
    let a = match MetalAllocator::new() {
        Ok(a) => a,
        Err(e @ (MetalError::Unsupported { .. } | MetalError::NoDevice)) => {
            println!("{e}");
            return;
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("{:?}", a);
    println!(
        "recommended max {} MiB, driver allocated {} MiB, high watermark {:?} B",
        a.recommended_max_memory() >> 20,
        a.driver_allocated_memory() >> 20,
        a.backend().high_watermark()
    );
    let second = a.new_stream().expect("a second command queue");
    let x = a.allocate(12 << 20, MetalStream::DEFAULT).expect("12 MiB");
    let y = a.allocate(300 << 10, second).expect("300 KiB");
    println!("x: {x:?}\ny: {y:?}");
    y.record_stream(MetalStream::DEFAULT);
    drop((x, y));
    print!("{}", a.memory_summary());
    a.empty_cache();
    println!(
        "after empty_cache: {} B reserved",
        a.stats().reserved_bytes.all.current
    );
}
