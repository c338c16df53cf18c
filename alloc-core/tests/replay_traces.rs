//! Replays of the shipped traces (and the snapshot fixture) through the engine:
//! no OOM, the engine's peak requested bytes equal the trace's own peak of live
//! bytes (computed here from the CSV text, independently of the parser), and
//! efficiency in (0, 1].

use std::collections::HashMap;

use alloc_core::replay::{self, Event, ReplayResult, Trace};
use alloc_core::{CachingAllocator, Config, DeviceBackend, HostBackend, SimBackend};

const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../traces");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SHIPPED: [&str; 4] = [
    "gpt2_decode.csv",
    "bert_serving.csv",
    "gpt_train.csv",
    "resnet50_infer.csv",
];
const SIM_CAPACITY: usize = 80 << 30;

/// Peak of live requested bytes and number of alloc lines, straight from the
/// CSV text: a second reading of the format, sharing no code with the parser.
fn csv_peak_and_allocs(text: &str) -> (u64, u64) {
    let (mut live, mut peak, mut allocs) = (0u64, 0u64, 0u64);
    let mut sizes: HashMap<&str, u64> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("op,"))
    {
        let f: Vec<&str> = line.split(',').collect();
        match f[0] {
            "a" => {
                let bytes: u64 = f[2].parse().unwrap();
                sizes.insert(f[1], bytes);
                live += bytes;
                peak = peak.max(live);
                allocs += 1;
            }
            "f" => live -= sizes[f[1]],
            other => panic!("unexpected op {other}"),
        }
    }
    (peak, allocs)
}

fn replay_on<B: DeviceBackend>(backend: B, config: &str, trace: &Trace) -> ReplayResult {
    let allocator = CachingAllocator::new(backend, Config::parse(config).expect("valid config"));
    replay::replay(trace, &allocator, config)
}

fn load_one(path: &str) -> Trace {
    let mut traces = replay::load(path).expect("trace parses");
    assert_eq!(traces.len(), 1, "{path}");
    traces.remove(0)
}

fn assert_sane(r: &ReplayResult, expected_peak: u64, ops: u64) {
    let name = format!("{} [{}]", r.trace, r.config);
    assert_eq!(r.ooms, 0, "{name}: {:?}", r.first_error);
    assert_eq!(r.other_errors, 0, "{name}: {:?}", r.first_error);
    assert_eq!(r.ops, ops, "{name}");
    assert_eq!(
        r.peak_requested_bytes, expected_peak,
        "{name}: engine peak requested vs trace"
    );
    assert_eq!(
        r.trace_peak_live_bytes, expected_peak,
        "{name}: parser peak vs CSV"
    );
    assert!(
        r.peak_reserved_bytes >= r.peak_requested_bytes,
        "{name}: {r:?}"
    );
    assert!(
        r.efficiency > 0.0 && r.efficiency <= 1.0,
        "{name}: efficiency {}",
        r.efficiency
    );
    let ratio = r.peak_requested_bytes as f64 / r.peak_reserved_bytes as f64;
    assert!(
        (r.efficiency - ratio).abs() < 1e-12,
        "{name}: efficiency {} vs {ratio}",
        r.efficiency
    );
    assert!(
        r.device_allocs >= 1 && r.device_allocs == r.segment_allocs + r.page_maps,
        "{name}: {r:?}"
    );
    assert_eq!(r.device_frees, r.segment_frees + r.page_unmaps, "{name}");
    assert!(r.ns_per_op > 0.0, "{name}");
}

/// The replay's backend counts are the calls the backend received: a sim
/// clone counts every allocate + map and deallocate + unmap (once each, not
/// once per statistic that counts them).
#[test]
fn replay_counts_match_the_backends_calls() {
    for file in SHIPPED {
        let path = format!("{TRACES}/{file}");
        let trace = load_one(&path);
        for config in ["", "expandable_segments:false"] {
            let sim = SimBackend::new(SIM_CAPACITY);
            let allocator = CachingAllocator::new(sim.clone(), Config::parse(config).unwrap());
            let r = replay::replay(&trace, &allocator, config);
            // read before the allocator is dropped (which releases its cache)
            let (obtains, returns) = sim.driver_calls();
            drop(allocator);
            assert_eq!(r.device_allocs, obtains, "{file} [{config}]");
            assert_eq!(r.device_frees, returns, "{file} [{config}]");
            assert_eq!(
                r.driver_calls,
                r.segment_allocs + 2 * r.pages_mapped + r.page_maps,
                "{file} [{config}]"
            );
            if config.is_empty() {
                assert!(r.page_maps >= 1 && r.segment_allocs == 0, "{file}: {r:?}");
            } else {
                assert!(r.page_maps == 0 && r.segment_allocs >= 1, "{file}: {r:?}");
            }
        }
    }
}

#[test]
fn shipped_traces_replay_on_sim_with_default_config() {
    for file in SHIPPED {
        let path = format!("{TRACES}/{file}");
        let text = std::fs::read_to_string(&path).unwrap();
        let (peak, allocs) = csv_peak_and_allocs(&text);
        let trace = load_one(&path);
        let started = std::time::Instant::now();
        let r = replay_on(SimBackend::new(SIM_CAPACITY), "", &trace);
        eprintln!(
            "{file}: {:?} for {} ops, efficiency {:.4}",
            started.elapsed(),
            r.ops,
            r.efficiency
        );
        assert_eq!(r.trace, file);
        assert_eq!(r.backend, "sim");
        // every shipped trace frees all it allocates
        assert_sane(&r, peak, 2 * allocs);
    }
}

#[test]
fn alternative_configs_replay_the_same_requests() {
    let path = format!("{TRACES}/resnet50_infer.csv");
    let (peak, allocs) = csv_peak_and_allocs(&std::fs::read_to_string(&path).unwrap());
    let trace = load_one(&path);
    for config in [
        "expandable_segments:False",
        "max_split_size_mb:20",
        "roundup_power2_divisions:4",
    ] {
        let r = replay_on(SimBackend::new(SIM_CAPACITY), config, &trace);
        assert_eq!(r.config, config);
        assert_sane(&r, peak, 2 * allocs);
    }
}

#[test]
fn host_backend_replays_a_trace() {
    let path = format!("{TRACES}/resnet50_infer.csv");
    let (peak, allocs) = csv_peak_and_allocs(&std::fs::read_to_string(&path).unwrap());
    let r = replay_on(HostBackend::new(), "", &load_one(&path));
    assert_eq!(r.backend, "host");
    assert_sane(&r, peak, 2 * allocs);
}

#[test]
fn snapshot_fixture_replays() {
    let trace = load_one(&format!("{FIXTURES}/snapshot_small.pickle"));
    let r = replay_on(SimBackend::new(SIM_CAPACITY), "", &trace);
    // 6 allocations, 4 frees (L and D stay live): see make_snapshot_fixture.py
    assert_sane(&r, 3_151_336, 10);
}

#[test]
fn out_of_memory_is_counted_and_the_replay_goes_on() {
    // 64 MiB of device memory for a trace whose weights alone need more.
    let trace = load_one(&format!("{TRACES}/resnet50_infer.csv"));
    let r = replay_on(SimBackend::new(64 << 20), "", &trace);
    assert!(r.ooms > 0, "{r:?}");
    assert_eq!(r.other_errors, 0, "{r:?}");
    let first = r.first_error.as_deref().unwrap_or_default();
    assert!(first.starts_with("out of memory"), "{first}");
    assert!(r.peak_reserved_bytes <= 64 << 20, "{r:?}");
    assert!(r.peak_requested_bytes < r.trace_peak_live_bytes, "{r:?}");
}

#[test]
fn streams_are_mapped_in_order_of_first_use() {
    // Two trace streams with large ids; both work on the sim backend.
    let events = vec![
        Event::Alloc {
            slot: 0,
            bytes: 1000,
            stream: 94_000_000_000,
        },
        Event::Alloc {
            slot: 1,
            bytes: 3000,
            stream: 7,
        },
        Event::Free { slot: 0 },
        Event::Free { slot: 1 },
    ];
    let trace = Trace::from_events("two-streams", events).unwrap();
    let r = replay_on(SimBackend::new(SIM_CAPACITY), "", &trace);
    assert_sane(&r, 4000, 4);
}
