//! The config parser never panics, and whatever it accepts builds an engine.
#![no_main]

use alloc_core::{CachingAllocator, Config, SimBackend};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(c) = Config::parse(s) {
        let a = CachingAllocator::new(SimBackend::new(1 << 30), c);
        let _ = a.allocate(1000, alloc_core::SimStream(0));
        a.validate().expect("invariants hold");
    }
});
