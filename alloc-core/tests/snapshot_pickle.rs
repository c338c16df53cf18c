//! `dump_snapshot` / `snapshot_pickle` write the dict PyTorch's
//! `torch.cuda.memory._dump_snapshot` writes. These tests read the pickle
//! back with serde-pickle (an independent reader) and check every key, type
//! and block state that PyTorch's `_memory_viz.py` and MemoryViz read, and the
//! equations `_memory_viz.py stats` asserts (blocks tile their segment).
//!
//! With `SNAPSHOT_DUMP_DIR` set, the snapshots are also written there, for
//! `tests/memory_viz/check.sh` to open with PyTorch's own `_memory_viz.py`.

use std::collections::{BTreeMap, BTreeSet};

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};
use serde_pickle::{DeOptions, HashableValue, Value};

const MIB: usize = 1 << 20;
const S0: SimStream = SimStream(0);
const S1: SimStream = SimStream(1);

fn parse(bytes: &[u8]) -> BTreeMap<HashableValue, Value> {
    match serde_pickle::value_from_slice(bytes, DeOptions::new()).expect("a readable pickle") {
        Value::Dict(d) => d,
        other => panic!("top level is not a dict: {other:?}"),
    }
}

fn key(s: &str) -> HashableValue {
    HashableValue::String(s.to_owned())
}

fn dict<'a>(v: &'a Value, at: &str) -> &'a BTreeMap<HashableValue, Value> {
    match v {
        Value::Dict(d) => d,
        other => panic!("{at} is not a dict: {other:?}"),
    }
}

fn list<'a>(v: &'a Value, at: &str) -> &'a [Value] {
    match v {
        Value::List(l) => l,
        other => panic!("{at} is not a list: {other:?}"),
    }
}

fn get<'a>(d: &'a BTreeMap<HashableValue, Value>, k: &str, at: &str) -> &'a Value {
    d.get(&key(k))
        .unwrap_or_else(|| panic!("{at} has no key `{k}`: {d:?}"))
}

fn int(v: &Value, at: &str) -> i128 {
    match v {
        Value::I64(i) => *i as i128,
        Value::Int(b) => b.to_string().parse().expect("big int"),
        other => panic!("{at} is not an int: {other:?}"),
    }
}

fn string<'a>(v: &'a Value, at: &str) -> &'a str {
    match v {
        Value::String(s) => s,
        other => panic!("{at} is not a str: {other:?}"),
    }
}

fn keys(d: &BTreeMap<HashableValue, Value>) -> BTreeSet<String> {
    d.keys()
        .map(|k| match k {
            HashableValue::String(s) => s.clone(),
            other => panic!("non-string key {other:?}"),
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The frames list holds exactly one frame naming scope `name`.
fn assert_scope_frames(v: &Value, name: &str, at: &str) {
    let frames = list(v, at);
    assert_eq!(frames.len(), 1, "{at}: {frames:?}");
    let f = dict(&frames[0], at);
    assert_eq!(keys(f), set(&["filename", "line", "name"]), "{at}");
    assert_eq!(string(get(f, "name", at), at), name, "{at}");
    assert_eq!(string(get(f, "filename", at), at), "scope", "{at}");
    assert_eq!(int(get(f, "line", at), at), 0, "{at}");
}

/// Checks one segment's keys and equations; returns its blocks' states.
fn check_segment(seg: &Value, at: &str) -> Vec<String> {
    let s = dict(seg, at);
    assert_eq!(
        keys(s),
        set(&[
            "device",
            "address",
            "total_size",
            "allocated_size",
            "active_size",
            "requested_size",
            "stream",
            "segment_type",
            "segment_pool_id",
            "is_expandable",
            "frames",
            "blocks",
        ]),
        "{at}"
    );
    assert_eq!(int(get(s, "device", at), at), 0);
    assert!(
        matches!(get(s, "is_expandable", at), Value::Bool(_)),
        "{at}"
    );
    assert!(
        matches!(get(s, "segment_pool_id", at), Value::Tuple(t) if t.len() == 2),
        "{at}"
    );
    let kind = string(get(s, "segment_type", at), at);
    assert!(kind == "small" || kind == "large", "{at}: {kind}");
    int(get(s, "stream", at), at);
    let (mut addr, total) = (
        int(get(s, "address", at), at),
        int(get(s, "total_size", at), at),
    );
    let end = addr + total;
    let (mut allocated, mut active, mut requested) = (0, 0, 0);
    let mut states = Vec::new();
    for (i, b) in list(get(s, "blocks", at), at).iter().enumerate() {
        let bat = format!("{at}.blocks[{i}]");
        let bd = dict(b, &bat);
        assert_eq!(
            keys(bd),
            set(&["address", "size", "requested_size", "state", "frames"]),
            "{bat}"
        );
        assert_eq!(
            int(get(bd, "address", &bat), &bat),
            addr,
            "{bat}: blocks tile"
        );
        let size = int(get(bd, "size", &bat), &bat);
        let req = int(get(bd, "requested_size", &bat), &bat);
        let state = string(get(bd, "state", &bat), &bat).to_owned();
        match state.as_str() {
            "active_allocated" => {
                allocated += size;
                active += size;
                assert!(req <= size && req > 0, "{bat}: requested {req} of {size}");
            }
            "active_pending_free" => active += size,
            "inactive" => assert!(list(get(bd, "frames", &bat), &bat).is_empty()),
            other => panic!("{bat}: state {other}"),
        }
        requested += req;
        addr += size;
        states.push(state);
    }
    assert_eq!(addr, end, "{at}: blocks sum to total_size");
    assert_eq!(int(get(s, "allocated_size", at), at), allocated, "{at}");
    assert_eq!(int(get(s, "active_size", at), at), active, "{at}");
    assert_eq!(int(get(s, "requested_size", at), at), requested, "{at}");
    states
}

/// Checks the top level, every segment and trace entry; returns the block
/// states and the trace actions seen.
fn check_snapshot(bytes: &[u8]) -> (BTreeSet<String>, Vec<String>) {
    let top = parse(bytes);
    assert_eq!(
        keys(&top),
        set(&[
            "segments",
            "device_traces",
            "allocator_settings",
            "external_annotations"
        ])
    );
    assert!(list(get(&top, "external_annotations", "top"), "top").is_empty());
    let settings = dict(get(&top, "allocator_settings", "top"), "allocator_settings");
    assert_eq!(
        keys(settings),
        set(&[
            "PYTORCH_CUDA_ALLOC_CONF",
            "max_split_size",
            "garbage_collection_threshold",
            "expandable_segments",
            "pinned_num_register_threads",
            "release_lock_on_cudamalloc",
            "pinned_use_cuda_host_register",
            "graph_capture_record_stream_reuse",
            "roundup_power2_divisions",
        ])
    );
    let roundup = dict(get(settings, "roundup_power2_divisions", "s"), "roundup");
    assert_eq!(roundup.len(), 16);
    assert!(roundup.contains_key(&key("1")) && roundup.contains_key(&key("32768")));
    let mut states = BTreeSet::new();
    for (i, seg) in list(get(&top, "segments", "top"), "segments")
        .iter()
        .enumerate()
    {
        states.extend(check_segment(seg, &format!("segments[{i}]")));
    }
    let traces = list(get(&top, "device_traces", "top"), "device_traces");
    assert_eq!(traces.len(), 1, "one device");
    let mut actions = Vec::new();
    let mut last_time = 0;
    for (i, e) in list(&traces[0], "device_traces[0]").iter().enumerate() {
        let at = format!("device_traces[0][{i}]");
        let d = dict(e, &at);
        let action = string(get(d, "action", &at), &at).to_owned();
        let where_key = if action == "oom" {
            "device_free"
        } else {
            "addr"
        };
        assert_eq!(
            keys(d),
            set(&[
                "action",
                where_key,
                "size",
                "stream",
                "time_us",
                "frames",
                "user_metadata"
            ]),
            "{at}"
        );
        let t = int(get(d, "time_us", &at), &at);
        assert!(t >= last_time, "{at}: time_us goes back");
        last_time = t;
        let scope = string(get(d, "user_metadata", &at), &at);
        assert_scope_frames(get(d, "frames", &at), scope, &at);
        actions.push(action);
    }
    (states, actions)
}

fn dump_for_memory_viz(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("SNAPSHOT_DUMP_DIR") {
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, bytes).expect("write the snapshot for check.sh");
    }
}

/// Expandable segments: live, pending and free blocks, two scopes, unmapping,
/// an OOM, one segment per mapped run.
#[test]
fn expandable_snapshot_has_pytorch_shape_states_and_scope_frames() {
    let sim = SimBackend::new(256 * MIB);
    let a = CachingAllocator::new(sim.clone(), Config::default());
    a.record_memory_history(true, 10_000);
    sim.set_auto_complete(false);

    let req_a = alloc_scope::scope("request-a");
    let small = a.allocate(3000, S0).unwrap();
    let large = a.allocate(30 * MIB, S0).unwrap();
    drop(req_a);
    let req_b = alloc_scope::scope("request-b");
    // first: the ladder's device-wide sync would complete the pending free
    let oom = a.allocate(1 << 40, S0);
    assert!(oom.is_err());
    let shared = a.allocate(8 * MIB, S0).unwrap();
    let gone = a.allocate(5 * MIB, S0).unwrap();
    shared.record_stream(S1);
    sim.launch(S1);
    drop(shared); // pending: S1 has unfinished work
    drop(gone);
    drop(req_b);

    let bytes = a.snapshot_pickle();
    dump_for_memory_viz("expandable.pickle", &bytes);
    let (states, actions) = check_snapshot(&bytes);
    assert_eq!(
        states,
        set(&["active_allocated", "active_pending_free", "inactive"]),
        "every block state appears"
    );
    for want in [
        "segment_map",
        "alloc",
        "free_requested",
        "free_completed",
        "oom",
        "snapshot",
    ] {
        assert!(
            actions.iter().any(|a| a == want),
            "no {want} in {actions:?}"
        );
    }

    // Which scope allocated each live block is in its frames.
    let top = parse(&bytes);
    let mut by_scope: BTreeMap<String, Vec<i128>> = BTreeMap::new();
    for seg in list(get(&top, "segments", "top"), "segments") {
        let seg = dict(seg, "seg");
        for b in list(get(seg, "blocks", "seg"), "blocks") {
            let b = dict(b, "b");
            if let [f] = list(get(b, "frames", "b"), "frames") {
                let name = string(get(dict(f, "f"), "name", "f"), "f").to_owned();
                by_scope
                    .entry(name)
                    .or_default()
                    .push(int(get(b, "address", "b"), "b"));
            }
        }
    }
    let addr = |buf: &alloc_core::DeviceBuffer<'_, SimBackend>| buf.ptr().0 as i128;
    assert_eq!(
        by_scope.get("request-a").cloned().unwrap_or_default(),
        vec![addr(&small), addr(&large)]
    );
    assert_eq!(
        by_scope.get("request-b").map(Vec::len),
        Some(1),
        "the pending block"
    );

    // OOM entry: PyTorch's shape, with the device's free bytes.
    let traces = list(get(&top, "device_traces", "top"), "t");
    let oom_entry = list(&traces[0], "t")
        .iter()
        .map(|e| dict(e, "e"))
        .find(|d| string(get(d, "action", "e"), "e") == "oom")
        .expect("an oom entry");
    assert!(int(get(oom_entry, "device_free", "oom"), "oom") > 0);
    assert!(int(get(oom_entry, "size", "oom"), "oom") >= 1 << 40);

    // Unmapping splits the reservation into runs: one segment per mapped run.
    sim.complete_all();
    drop(small);
    a.empty_cache();
    let after = a.snapshot_pickle();
    dump_for_memory_viz("expandable_after_empty_cache.pickle", &after);
    let (_, actions) = check_snapshot(&after);
    assert!(actions.iter().any(|a| a == "segment_unmap"), "{actions:?}");
    let top = parse(&after);
    let segs = list(get(&top, "segments", "top"), "segments");
    let total: i128 = segs
        .iter()
        .map(|s| int(get(dict(s, "s"), "total_size", "s"), "s"))
        .sum();
    assert_eq!(
        total as i64,
        a.stats().reserved_bytes.all.current,
        "segments = reserved"
    );
    drop(large);
}

/// Fixed segments: segment_alloc / segment_free, the config echoed in
/// allocator_settings.
#[test]
fn fixed_snapshot_records_segment_alloc_and_free() {
    let cfg = "expandable_segments:False,max_split_size_mb:40,garbage_collection_threshold:0.5";
    let a = CachingAllocator::new(SimBackend::without_vm(1 << 30), Config::parse(cfg).unwrap());
    a.record_memory_history(true, 1000);
    let g = alloc_scope::scope("fixed");
    let x = a.allocate(3 * MIB, S0).unwrap();
    let y = a.allocate(200, S0).unwrap();
    drop(x);
    a.empty_cache();
    drop(g);
    let bytes = a.snapshot_pickle();
    dump_for_memory_viz("fixed.pickle", &bytes);
    let (states, actions) = check_snapshot(&bytes);
    assert!(states.contains("active_allocated"));
    assert!(actions.iter().any(|a| a == "segment_alloc"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "segment_free"), "{actions:?}");
    let top = parse(&bytes);
    let settings = dict(get(&top, "allocator_settings", "top"), "s");
    assert_eq!(int(get(settings, "max_split_size", "s"), "s"), 40 << 20);
    assert!(matches!(
        get(settings, "expandable_segments", "s"),
        Value::Bool(false)
    ));
    assert!(
        matches!(get(settings, "garbage_collection_threshold", "s"), Value::F64(f) if *f == 0.5)
    );
    let conf = string(get(settings, "PYTORCH_CUDA_ALLOC_CONF", "s"), "s");
    assert_eq!(
        Config::parse(conf).unwrap(),
        Config::parse(cfg).unwrap(),
        "{conf}"
    );
    let segs = list(get(&top, "segments", "top"), "segments");
    assert_eq!(
        segs.len(),
        1,
        "the small segment stays; the freed large one is gone"
    );
    drop(y);
}

/// History off: no trace entries, blocks without frames; turning it off keeps
/// what was recorded.
#[test]
fn history_off_records_nothing_and_stopping_keeps_entries() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let x = a.allocate(4096, S0).unwrap();
    let top = parse(&a.snapshot_pickle());
    let traces = list(get(&top, "device_traces", "top"), "t");
    assert!(list(&traces[0], "t").is_empty());
    a.record_memory_history(true, 100);
    drop(x);
    a.record_memory_history(false, 100);
    let _y = a.allocate(4096, S0).unwrap();
    let top = parse(&a.snapshot_pickle());
    let traces = list(get(&top, "device_traces", "top"), "t");
    let actions: Vec<_> = list(&traces[0], "t")
        .iter()
        .map(|e| string(get(dict(e, "e"), "action", "e"), "e").to_owned())
        .collect();
    assert_eq!(actions, ["free_requested", "free_completed"]);
}

#[test]
fn dump_snapshot_writes_the_pickle_to_a_file() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let _x = a.allocate(4096, S0).unwrap();
    let path = std::env::temp_dir().join(format!("snapshot_pickle_{}.pickle", std::process::id()));
    a.dump_snapshot(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let (states, _) = check_snapshot(&bytes);
    assert!(states.contains("active_allocated"));
    assert_eq!(&bytes[..2], &[0x80, 2], "pickle protocol 2");
}

/// A hole unmapped in the middle of an expandable reservation splits it into
/// two PyTorch segments, each tiled by its blocks.
#[test]
fn unmapped_hole_splits_an_expandable_reservation_into_two_segments() {
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    a.record_memory_history(true, 1000);
    let first = a.allocate(20 * MIB, S0).unwrap();
    let middle = a.allocate(20 * MIB, S0).unwrap();
    let last = a.allocate(20 * MIB, S0).unwrap();
    drop(middle);
    a.empty_cache();
    let bytes = a.snapshot_pickle();
    dump_for_memory_viz("expandable_hole.pickle", &bytes);
    let (_, actions) = check_snapshot(&bytes);
    assert!(actions.iter().any(|a| a == "segment_unmap"), "{actions:?}");
    let top = parse(&bytes);
    let large: Vec<(i128, i128)> = list(get(&top, "segments", "top"), "segments")
        .iter()
        .map(|s| dict(s, "s"))
        .filter(|s| string(get(s, "segment_type", "s"), "s") == "large")
        .map(|s| {
            (
                int(get(s, "address", "s"), "s"),
                int(get(s, "total_size", "s"), "s"),
            )
        })
        .collect();
    let (f, l) = (first.ptr().0 as i128, last.ptr().0 as i128);
    assert_eq!(large.len(), 2, "{large:?}");
    assert_eq!(large[0].0, f);
    assert!(
        large[0].0 + large[0].1 < large[1].0,
        "a hole between: {large:?}"
    );
    assert!(large[1].0 <= l && l < large[1].0 + large[1].1, "{large:?}");
}

/// A block keeps the scope it was allocated in for as long as it lives, after
/// the ring (4 entries here) has dropped its `alloc` event; a block allocated
/// while history was off has no frames.
#[test]
fn a_live_block_keeps_its_scope_after_the_ring_dropped_its_alloc() {
    let sim = SimBackend::new(256 * MIB);
    let a = CachingAllocator::new(sim, Config::default());
    let before = a.allocate(4096, S0).unwrap();
    a.record_memory_history(true, 4);
    let g = alloc_scope::scope("request-7");
    let kept = a.allocate(3 * MIB, S0).unwrap();
    drop(g);
    for _ in 0..50 {
        drop(a.allocate(1000, S0).unwrap());
    }
    // the JSON snapshot names it too
    let snap = a.snapshot();
    let block = snap
        .segments
        .iter()
        .flat_map(|s| &s.blocks)
        .find(|b| b.address == kept.ptr().0)
        .unwrap();
    assert_eq!(block.scope.as_deref(), Some("request-7"));
    let old = snap
        .segments
        .iter()
        .flat_map(|s| &s.blocks)
        .find(|b| b.address == before.ptr().0)
        .unwrap();
    assert_eq!(old.scope, None, "allocated while history was off");

    let bytes = a.snapshot_pickle();
    check_snapshot(&bytes);
    let top = parse(&bytes);
    let mut seen = 0;
    for seg in list(get(&top, "segments", "top"), "segments") {
        let seg = dict(seg, "seg");
        for b in list(get(seg, "blocks", "seg"), "blocks") {
            let b = dict(b, "block");
            let addr = int(get(b, "address", "block"), "address") as usize;
            if addr == kept.ptr().0 {
                assert_scope_frames(get(b, "frames", "block"), "request-7", "kept block");
                seen += 1;
            } else if addr == before.ptr().0 {
                assert!(list(get(b, "frames", "block"), "frames").is_empty());
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 2);
    drop((kept, before));
}

/// A block handed out while history was off has no frames, even when the
/// ring still holds an older allocation at the same address (whose scope is
/// not this block's).
#[test]
fn a_block_from_while_history_was_off_is_not_given_an_older_blocks_scope() {
    let sim = SimBackend::new(256 * MIB);
    let a = CachingAllocator::new(sim, Config::default());
    a.record_memory_history(true, 1000);
    let g = alloc_scope::scope("request-old");
    let old = a.allocate(3 * MIB, S0).unwrap();
    let p = old.ptr();
    drop(old);
    drop(g);
    a.record_memory_history(false, 0);
    let g = alloc_scope::scope("request-new");
    let new = a.allocate(3 * MIB, S0).unwrap();
    drop(g);
    assert_eq!(new.ptr(), p, "the cached block is reused");
    let bytes = a.snapshot_pickle();
    let top = parse(&bytes);
    let mut seen = false;
    for seg in list(get(&top, "segments", "top"), "segments") {
        let seg = dict(seg, "seg");
        for b in list(get(seg, "blocks", "seg"), "blocks") {
            let b = dict(b, "block");
            if int(get(b, "address", "block"), "address") as usize == p.0 {
                assert!(
                    list(get(b, "frames", "block"), "frames").is_empty(),
                    "block from while history was off got frames {:?}",
                    get(b, "frames", "block")
                );
                seen = true;
            }
        }
    }
    assert!(seen);
    drop(new);
}
