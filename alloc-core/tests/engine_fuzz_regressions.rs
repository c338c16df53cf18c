//! Inputs the `ops_sim` fuzz target once failed on, replayed exactly as the
//! target runs them (first byte: config and whether the device has virtual
//! memory; the rest: the Op program).

use alloc_core::adaptors::FaultInjectingBackend;
use alloc_core::ops;
use alloc_core::{CachingAllocator, Config, SimBackend};

/// The fuzz target's configs, in its order.
const CONFIGS: [&str; 6] = [
    "",
    "expandable_segments:false",
    "expandable_segments:false,max_split_size_mb:40",
    "roundup_power2_divisions:4,max_cached_fraction:0",
    "max_reserved_mb:300",
    "expandable_segments:false,max_reserved_mb:300",
];

fn run(hex: &str) -> Result<(), String> {
    let data: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let (&head, rest) = data.split_first().unwrap();
    let (cfg, vm) = (head >> 1, head & 1 == 1);
    let sim = if vm {
        SimBackend::new(1 << 30)
    } else {
        SimBackend::without_vm(1 << 30)
    };
    sim.set_auto_complete(false);
    let config = Config::parse(CONFIGS[cfg as usize % CONFIGS.len()]).unwrap();
    let a = CachingAllocator::new(FaultInjectingBackend::new(sim.clone()), config);
    ops::run(&a, &sim, &ops::program_from_bytes(rest))?;
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    Ok(())
}

/// A grow filled reserved memory up to the slack bound (requested peak ×
/// 33/32), which lay above the 300 MiB cap: reserved passed the cap by 2 MiB.
#[test]
fn grow_up_to_the_slack_bound_stays_under_the_cap() {
    assert_eq!(
        run(
            "812525000f2626ec26262626262626262626dade26c2c25f2626c2c25f0081018131000000000000000004bf0a1a16ff0a1a16f61330303030303030301313131313303030303030131313131313134cf91313131313008f13131313131313f613303030303030303013130303030303030303030303030303030303030303037a13131313134cf91313131313008f1313303030131313131313134cf91313131312ffffff0004bf0a1a16ff0a1a16f6133030303030303030131313131313134cf91313131313008f13131313131313f613303030303030303013130303030303030303030303030303038f131313138101001308fd01131313f6fc0129400000010181fc01"
        ),
        Ok(())
    );
}
