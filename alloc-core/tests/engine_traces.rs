//! The efficiency target on the shipped traces (`../shared/traces`, beside
//! the repository): with the default config, peak requested ÷ peak reserved
//! ≥ 0.95 on every trace. Driver calls (map + unmap) are printed beside the
//! `cudaMalloc` count of PyTorch's policy (fixed segments) and bounded at 6×
//! it plus 40 (a regression guard: the target, at or below
//! PyTorch's count, is not met on every trace; see benches/RESULTS.md).

use std::collections::HashMap;
use std::path::PathBuf;

use alloc_core::{CachingAllocator, Config, DeviceBackend, SimBackend, Stats};

fn traces_dir() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces");
    d.is_dir().then_some(d)
}

fn replay(text: &str, cfg: &str) -> Stats {
    let sim = SimBackend::new(80 << 30);
    let a = CachingAllocator::new(sim.clone(), Config::parse(cfg).unwrap());
    let mut live = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("op,") && !l.is_empty())
    {
        let f: Vec<&str> = line.split(',').collect();
        match f[0] {
            "a" => {
                let b = a
                    .allocate(
                        f[2].parse().unwrap(),
                        sim.stream_for_id(f[3].parse().unwrap_or(0)),
                    )
                    .unwrap();
                live.insert(f[1].to_string(), b);
            }
            _ => {
                live.remove(f[1]);
            }
        }
    }
    a.validate().unwrap();
    a.stats()
}

#[test]
fn default_config_reaches_095_on_every_trace() {
    let Some(dir) = traces_dir() else {
        eprintln!("SKIPPED: no traces at ../shared/traces beside the repository");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let ours = replay(&text, "");
        let pytorch = replay(&text, "expandable_segments:false");
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        eprintln!(
            "{name}: efficiency {:.3} (fixed {:.3}), maps {} unmaps {} (fixed: {} cudaMalloc)",
            ours.efficiency(),
            pytorch.efficiency(),
            ours.num_device_alloc,
            ours.num_device_free,
            pytorch.num_device_alloc
        );
        assert!(
            ours.efficiency() >= 0.95,
            "{name}: efficiency {:.4}",
            ours.efficiency()
        );
        assert!(
            ours.device_obtains() <= pytorch.num_device_alloc * 6 + 40,
            "{name}: {} maps vs {} fixed-segment allocations",
            ours.device_obtains(),
            pytorch.num_device_alloc
        );
    }
}
