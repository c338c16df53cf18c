//! Property test: arbitrary Op programs (the same language cargo-fuzz uses)
//! keep every invariant on the simulated backend, in both segment modes.

use alloc_core::adaptors::FaultInjectingBackend;
use alloc_core::ops::{self, Op};
use alloc_core::{CachingAllocator, Config, SimBackend};
use arbitrary::{Arbitrary, Unstructured};
use proptest::prelude::*;

fn run(bytes: &[u8], cfg: &str) -> Result<(), String> {
    let mut u = Unstructured::new(bytes);
    let ops: Vec<Op> = Vec::<Op>::arbitrary(&mut u).map_err(|e| e.to_string())?;
    let sim = SimBackend::new(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(
        FaultInjectingBackend::new(sim.clone()),
        Config::parse(cfg).unwrap(),
    );
    ops::run(&a, &sim, &ops)?;
    if !sim.violations().is_empty() {
        return Err(format!("backend contract breaches: {:?}", sim.violations()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn expandable(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        prop_assert_eq!(run(&bytes, ""), Ok(()));
    }

    #[test]
    fn fixed(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        prop_assert_eq!(run(&bytes, "expandable_segments:false,max_split_size_mb:40"), Ok(()));
    }
}
