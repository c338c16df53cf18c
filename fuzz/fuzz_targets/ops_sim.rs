//! Drives the engine with arbitrary Op programs on the simulated device, in a
//! config chosen by the first byte; the interpreter checks every invariant
//! and the oracles (in-flight memory, OOM legitimacy, PyTorch's counters).
#![no_main]

use alloc_core::adaptors::FaultInjectingBackend;
use alloc_core::ops::{self, Op};
use alloc_core::{CachingAllocator, Config, SimBackend};
use libfuzzer_sys::fuzz_target;

const CONFIGS: [&str; 6] = [
    "",
    "expandable_segments:false",
    "expandable_segments:false,max_split_size_mb:40",
    "roundup_power2_divisions:4,max_cached_fraction:0",
    "max_reserved_mb:300",
    "expandable_segments:false,max_reserved_mb:300",
];

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (cfg, vm) = (head >> 1, head & 1 == 1);
    let program: Vec<Op> = ops::program_from_bytes(rest);
    let sim = if vm {
        SimBackend::new(1 << 30)
    } else {
        SimBackend::without_vm(1 << 30)
    };
    sim.set_auto_complete(false);
    let config = Config::parse(CONFIGS[cfg as usize % CONFIGS.len()]).expect("fixed configs parse");
    let a = CachingAllocator::new(FaultInjectingBackend::new(sim.clone()), config);
    if let Err(e) = ops::run(&a, &sim, &program) {
        panic!("{e}");
    }
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
});
