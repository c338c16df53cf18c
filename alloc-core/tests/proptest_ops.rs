//! Property test: arbitrary Op programs (the same language cargo-fuzz uses)
//! keep every invariant on the simulated backend, in both segment modes.

use alloc_core::adaptors::FaultInjectingBackend;
use alloc_core::ops::{self, Op};
use alloc_core::{CachingAllocator, Config, SimBackend};
use proptest::prelude::*;

fn run(bytes: &[u8], cfg: &str) -> Result<(), String> {
    let ops = ops::program_from_bytes(bytes);
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
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn expandable(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        prop_assert_eq!(run(&bytes, ""), Ok(()));
    }

    #[test]
    fn capped(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        prop_assert_eq!(run(&bytes, "max_reserved_mb:300"), Ok(()));
    }

    #[test]
    fn fixed(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        prop_assert_eq!(run(&bytes, "expandable_segments:false,max_split_size_mb:40"), Ok(()));
    }
}

/// The generated programs are long enough to matter.
#[test]
fn programs_are_not_trivial() {
    let bytes: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let ops = ops::program_from_bytes(&bytes);
    assert!(ops.len() >= 100, "only {} ops from 3000 bytes", ops.len());
    assert!(ops.iter().any(|o| matches!(o, Op::Alloc { .. })));
}
