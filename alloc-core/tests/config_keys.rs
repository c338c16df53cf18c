//! Every key PyTorch 2.x accepts in `PYTORCH_CUDA_ALLOC_CONF` is accepted here,
//! with PyTorch's rule for its value; keys without an effect here warn; the
//! list form of `roundup_power2_divisions` means what it means in PyTorch.
//!
//! The key list is PyTorch's (c10/core/AllocatorConfig.cpp `getKeys` and
//! c10/cuda/CUDAAllocatorConfig.h `getKeys`), written out here as the oracle.

use alloc_core::config::{Config, ConfigError, KEY_TABLE, KEYS};
use proptest::prelude::*;

/// PyTorch's keys, each with a value PyTorch accepts.
const PYTORCH_KEYS: &[(&str, &str)] = &[
    ("large_segment_size_mb", "20"),
    ("max_split_size_mb", "256"),
    ("max_non_split_rounding_mb", "20"),
    ("garbage_collection_threshold", "0.6"),
    ("roundup_power2_divisions", "4"),
    ("expandable_segments", "True"),
    ("pinned_use_background_threads", "True"),
    ("backend", "native"),
    ("release_lock_on_cudamalloc", "True"),
    ("pinned_use_cuda_host_register", "True"),
    ("release_lock_on_hipmalloc", "False"),
    ("pinned_use_hip_host_register", "False"),
    ("graph_capture_record_stream_reuse", "True"),
    ("pinned_reserve_segment_size_mb", "64"),
    ("pinned_num_register_threads", "8"),
    ("per_process_memory_fraction", "0.5"),
    ("pinned_free_catch_all", "True"),
    ("throw_on_cudamalloc_oom", "True"),
    ("expandable_segments_reserve", "0.5"),
    ("expandable_segments_reserve_by_class", "[0:0.5,1:40G]"),
];

/// Keys that change nothing here (every value warns).
const NO_EFFECT: &[&str] = &[
    "pinned_use_background_threads",
    "release_lock_on_cudamalloc",
    "pinned_use_cuda_host_register",
    "release_lock_on_hipmalloc",
    "pinned_use_hip_host_register",
    "graph_capture_record_stream_reuse",
    "pinned_reserve_segment_size_mb",
    "pinned_num_register_threads",
    "pinned_free_catch_all",
    "throw_on_cudamalloc_oom",
    "expandable_segments_reserve",
    "expandable_segments_reserve_by_class",
];

#[test]
fn every_pytorch_key_is_accepted_and_listed() {
    for (key, value) in PYTORCH_KEYS {
        let entry = format!("{key}:{value}");
        let c = Config::parse(&entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert!(KEYS.contains(key), "{key} missing from KEYS");
        if NO_EFFECT.contains(key) {
            assert_eq!(c.warnings.len(), 1, "{entry}: {:?}", c.warnings);
            let w = &c.warnings[0];
            assert!(
                w.contains(key) && w.contains(value) && w.contains("no effect here"),
                "{w}"
            );
        } else {
            assert!(c.warnings.is_empty(), "{entry} warns: {:?}", c.warnings);
        }
    }
    // all together, in one string, as a user would carry it over
    let all: Vec<String> = PYTORCH_KEYS
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    let c = Config::parse(&all.join(",")).unwrap();
    assert_eq!(c.warnings.len(), NO_EFFECT.len());
    assert_eq!(c.max_split_size, 256 << 20);
    assert_eq!(c.memory_fraction, Some(0.5));
    assert_eq!(c.pinned_num_register_threads, 8);
    assert!(c.graph_capture_record_stream_reuse);
    // release_lock_on_hipmalloc:False comes after release_lock_on_cudamalloc:True
    assert!(!c.release_lock_on_device_alloc);
}

#[test]
fn other_values_of_implemented_sizes_and_backends_warn() {
    for entry in [
        "max_non_split_rounding_mb:64",
        "large_segment_size_mb:32",
        "backend:cudaMallocAsync",
        "backend:async",
    ] {
        let c = Config::parse(entry).unwrap();
        assert_eq!(c.warnings.len(), 1, "{entry}");
        assert!(c.warnings[0].contains("no effect here"), "{:?}", c.warnings);
    }
}

/// Bad values are errors that name the key, the value and the rule.
#[test]
fn bad_values_name_key_value_and_rule() {
    let cases = [
        ("pinned_num_register_threads:3", "power of two"),
        (
            "pinned_num_register_threads:256",
            "power of two from 1 to 128",
        ),
        ("expandable_segments:maybe", "true or false"),
        ("pinned_use_background_threads:yes", "true or false"),
        ("backend:cuda", "native"),
        ("expandable_segments_reserve:2", "fraction"),
        ("expandable_segments_reserve:-1G", "fraction"),
        ("expandable_segments_reserve_by_class:0:0.5", "list"),
        ("expandable_segments_reserve_by_class:[x:0.5]", "class"),
        ("max_non_split_rounding_mb:10", "at least 20"),
        ("large_segment_size_mb:abc", "integer"),
        ("pinned_reserve_segment_size_mb:-3", "integer"),
        ("roundup_power2_divisions:[100:2]", "power-of-two"),
        ("roundup_power2_divisions:[64:3]", "power of two"),
    ];
    for (entry, rule) in cases {
        let e = Config::parse(entry).unwrap_err();
        let (key, value) = entry.split_once(':').unwrap();
        match &e {
            ConfigError::BadValue {
                key: k, value: v, ..
            } => {
                assert_eq!((k.as_str(), v.as_str()), (key, value), "{entry}");
            }
            other => panic!("{entry}: {other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains(key) && text.contains(value), "{text}");
        assert!(text.contains(rule), "{entry}: `{text}` lacks `{rule}`");
    }
    let e = Config::parse("pinned_use_everything:True")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown config key `pinned_use_everything`"),
        "{e}"
    );
    assert!(e.contains("expandable_segments_reserve_by_class"), "{e}");
}

/// PyTorch's rule for the list form: the first interval's divisions also
/// apply below it, later intervals set only their own, `>` sets the ones
/// above the last named, the rest stay 0.
#[test]
fn roundup_list_means_what_it_means_in_pytorch() {
    let c = Config::parse("roundup_power2_divisions:[64:8,256:4,1024:4,>:1]").unwrap();
    // intervals from 1 MiB: index i covers [2^i, 2^(i+1)) MiB
    let mut want = [0u32; 16];
    want[..=6].fill(8); // 1..128 MiB
    want[8] = 4; // 256 MiB
    want[10] = 4; // 1024 MiB
    want[11..].fill(1);
    assert_eq!(c.roundup_power2_divisions, want);
    let d = Config::parse("roundup_power2_divisions:[256:1,512:2,>:4]").unwrap();
    assert_eq!(d.roundup_power2_divisions[..=8], [1; 9]);
    assert_eq!(d.roundup_power2_divisions[9], 2);
    assert_eq!(d.roundup_power2_divisions[10..], [4; 6]);
    let e = Config::parse("roundup_power2_divisions:[>:2]").unwrap();
    assert_eq!(e.roundup_power2_divisions, [2; 16]);
    let f = Config::parse("roundup_power2_divisions:4").unwrap();
    assert_eq!(f.roundup_power2_divisions, [4; 16]);
}

fn arb_config_text() -> impl Strategy<Value = String> {
    let entries = prop::collection::vec(
        prop_oneof![
            (20usize..4096).prop_map(|m| format!("max_split_size_mb:{m}")),
            (1u32..100).prop_map(|p| format!("garbage_collection_threshold:0.{p:02}")),
            any::<bool>().prop_map(|b| format!("expandable_segments:{b}")),
            (1u32..=100).prop_map(|p| format!("per_process_memory_fraction:{}", p as f64 / 100.0)),
            (1usize..100_000).prop_map(|m| format!("max_reserved_mb:{m}")),
            (0usize..10_000).prop_map(|n| format!("trace_buffer_entries:{n}")),
            (0u32..5).prop_map(|k| format!("roundup_power2_divisions:{}", 1u32 << k)),
            (0u32..5, 0u32..16).prop_map(|(k, i)| format!(
                "roundup_power2_divisions:[{}:{},>:2]",
                1u64 << i,
                1u32 << k
            )),
        ],
        0..6,
    );
    entries.prop_map(|v| v.join(","))
}

#[test]
fn max_cached_fraction_is_accepted_with_a_no_effect_warning() {
    let c = Config::parse("max_cached_fraction:0.2").unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("max_cached_fraction") && w.contains("no effect")),
        "{:?}",
        c.warnings
    );
}

/// Any mix of the table's example values, in any order and with repeats.
fn arb_table_text() -> impl Strategy<Value = Vec<String>> {
    let entries: Vec<String> = KEY_TABLE
        .iter()
        .flat_map(|k| k.examples.iter().map(move |v| format!("{}:{v}", k.name)))
        .collect();
    prop::collection::vec(prop::sample::select(entries), 0..12)
}

proptest! {
    /// Over every key of the table: the conf string parses back to the same
    /// settings less those without an effect (the entries that warn), which
    /// it leaves out, and parses without a warning.
    #[test]
    fn conf_string_round_trips_over_the_table(entries in arb_table_text()) {
        let c = Config::parse(&entries.join(",")).unwrap();
        let effective: Vec<&str> = entries
            .iter()
            .map(String::as_str)
            .filter(|e| Config::parse(e).unwrap().warnings.is_empty())
            .collect();
        let conf = c.to_conf_string();
        let back = Config::parse(&conf).unwrap();
        prop_assert!(back.warnings.is_empty(), "{}: {:?}", conf, back.warnings);
        prop_assert_eq!(&back, &Config::parse(&effective.join(",")).unwrap(), "{}", conf);
        prop_assert_eq!(c.warnings.len(), entries.len() - effective.len());
    }

    /// `to_conf_string` (what a snapshot reports as PYTORCH_CUDA_ALLOC_CONF)
    /// parses back to the same settings.
    #[test]
    fn conf_string_round_trips(text in arb_config_text()) {
        let c = Config::parse(&text).unwrap();
        let back = Config::parse(&c.to_conf_string()).unwrap();
        prop_assert_eq!(back, c, "{}", text);
    }

    /// The parser never panics; what it refuses, it explains with the key.
    #[test]
    fn parse_never_panics(text in "[a-z_:,\\[\\]>0-9.GTrueFals]{0,40}") {
        if let Err(e) = Config::parse(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
