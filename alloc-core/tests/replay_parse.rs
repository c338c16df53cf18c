//! Trace parsers: the CSV format and PyTorch snapshot pickles, good and bad
//! inputs, with the exact error messages.

use std::collections::BTreeMap;

use alloc_core::replay::{self, Event, Format, Trace, TraceError};
use serde_pickle::{HashableValue, SerOptions, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../traces");

fn csv_err(text: &str) -> String {
    match replay::parse_csv("t.csv", text) {
        Ok(trace) => panic!("expected an error, parsed {} events", trace.events().len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn csv_good_input_gives_events_on_slots() {
    let text = "# header text\nop,id,bytes,stream\n\na,10,65536,0\na,7,512,1\r\nf,10,,\n f , 7 \na,3,0,0\n";
    let trace = replay::parse_csv("t.csv", text).expect("valid trace");
    assert_eq!(trace.name(), "t.csv");
    assert_eq!(trace.slots(), 3);
    assert_eq!(
        trace.events(),
        &[
            Event::Alloc {
                slot: 0,
                bytes: 65536,
                stream: 0
            },
            Event::Alloc {
                slot: 1,
                bytes: 512,
                stream: 1
            },
            Event::Free { slot: 0 },
            Event::Free { slot: 1 },
            Event::Alloc {
                slot: 2,
                bytes: 0,
                stream: 0
            },
        ]
    );
    let stats = trace.stats();
    assert_eq!((stats.allocs, stats.frees), (3, 2));
    assert_eq!(stats.peak_live_bytes, 66048);
    assert_eq!(stats.live_at_end_bytes, 0);
    assert_eq!(stats.streams, vec![0, 1]);
}

#[test]
fn csv_errors_name_line_value_and_expectation() {
    let cases = [
        (
            "a,0,abc,0",
            "t.csv:1: bytes `abc` is not a number; expected an unsigned integer",
        ),
        (
            "# h\na,x1,5,0",
            "t.csv:2: id `x1` is not a number; expected an unsigned integer",
        ),
        (
            "a,0,-5,0",
            "t.csv:1: bytes `-5` is negative; expected an unsigned integer",
        ),
        (
            "a,0,99999999999999999999,0",
            "t.csv:1: bytes `99999999999999999999` is too large; expected an unsigned integer",
        ),
        (
            "a,0,5",
            "t.csv:1: stream is missing; expected an unsigned integer (line format `op,id,bytes,stream`)",
        ),
        (
            "a,0,,0",
            "t.csv:1: bytes is missing; expected an unsigned integer (line format `op,id,bytes,stream`)",
        ),
        (
            "a,0,5,0,9",
            "t.csv:1: 5 fields; expected at most 4 (line format `op,id,bytes,stream`)",
        ),
        (
            "a,0,5,0\nm,0,5,0",
            "t.csv:2: unknown op `m`; expected `a` (allocate) or `f` (free), line format `op,id,bytes,stream`",
        ),
        (
            "a,0,5,0\nf,0,,\na,0,5,0",
            "t.csv:3: id 0 is allocated again (first allocated at line 1); expected ids unique within a file",
        ),
        (
            "a,0,5,0\nf,1,,",
            "t.csv:2: free of unknown id 1; expected the id of an earlier `a` line",
        ),
        (
            "a,0,5,0\nf,0,,\n\nf,0,,",
            "t.csv:4: id 0 is freed twice (first freed at line 2); expected one free per id",
        ),
        (
            "# only a header\nop,id,bytes,stream\n",
            "t.csv: the trace holds no allocation; expected lines like `a,0,65536,0` (format `op,id,bytes,stream`)",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(csv_err(text), expected, "input {text:?}");
    }
}

#[test]
fn csv_error_variant_carries_file_and_line() {
    let err = replay::parse_csv("gpt2.csv", "op,id,bytes,stream\na,0,1,0\na,1,abc,0").unwrap_err();
    match err {
        TraceError::Csv { file, line, .. } => assert_eq!((file.as_str(), line), ("gpt2.csv", 3)),
        other => panic!("expected a CSV error, got {other:?}"),
    }
}

/// The shipped traces parse, with the counts and peaks of their README.
#[test]
fn shipped_traces_match_their_readme() {
    // (file, allocs, peak live in MiB to one decimal) from traces/README.md
    let table = [
        ("gpt2_decode.csv", 20_830, "621.9"),
        ("bert_serving.csv", 9_355, "509.2"),
        ("gpt_train.csv", 3_539, "1327.8"),
        ("resnet50_infer.csv", 1_460, "188.0"),
    ];
    for (file, allocs, peak_mib) in table {
        let traces = replay::load(format!("{TRACES}/{file}")).expect("shipped trace parses");
        assert_eq!(traces.len(), 1);
        assert_eq!(traces[0].name(), file);
        let stats = traces[0].stats();
        assert_eq!(stats.allocs, allocs, "{file}");
        let mib = format!("{:.1}", stats.peak_live_bytes as f64 / (1u64 << 20) as f64);
        assert_eq!(mib, peak_mib, "{file}");
    }
}

#[test]
fn load_names_a_missing_file() {
    let err = replay::load("/nonexistent/x.csv").unwrap_err().to_string();
    assert!(err.starts_with("cannot read /nonexistent/x.csv: "), "{err}");
}

#[test]
fn format_is_chosen_by_magic_byte_then_extension() {
    assert_eq!(Format::detect("a.csv", b"\x80\x04"), Format::Snapshot);
    assert_eq!(Format::detect("a.pickle", b"x"), Format::Snapshot);
    assert_eq!(Format::detect("a.pkl", b""), Format::Snapshot);
    assert_eq!(Format::detect("a.csv", b"a,0,1,0"), Format::Csv);
    assert_eq!(Format::detect("trace", b"# h"), Format::Csv);
}

// ---- snapshots ----------------------------------------------------------

const S1: u64 = 94_000_000_000;
const MIB: usize = 1 << 20;

/// The events `make_snapshot_fixture.py` describes in its docstring.
fn fixture_events() -> Vec<Event> {
    vec![
        Event::Alloc {
            slot: 0,
            bytes: 4096,
            stream: 0,
        }, // A, freed in the trace only
        Event::Alloc {
            slot: 1,
            bytes: 1000,
            stream: 0,
        }, // L, live in `segments` only
        Event::Alloc {
            slot: 2,
            bytes: 3 * MIB,
            stream: 0,
        }, // B
        Event::Alloc {
            slot: 3,
            bytes: 512,
            stream: S1,
        }, // C
        Event::Free { slot: 0 }, // A free_completed
        Event::Free { slot: 2 }, // B free_completed
        Event::Alloc {
            slot: 4,
            bytes: MIB,
            stream: 0,
        }, // D at B's address
        Event::Free { slot: 3 }, // C free_completed, after D
        Event::Alloc {
            slot: 5,
            bytes: 2048,
            stream: 0,
        }, // E
        Event::Free { slot: 5 }, // E free_requested, never completed
    ]
}

#[test]
fn snapshot_fixture_parses_in_protocols_2_4_5() {
    for file in [
        "snapshot_small.pickle",
        "snapshot_small_p2.pickle",
        "snapshot_small_p5.pickle",
    ] {
        let traces = replay::load(format!("{FIXTURES}/{file}")).expect("fixture parses");
        assert_eq!(traces.len(), 1, "{file}: only device 0 has entries");
        assert_eq!(traces[0].name(), file);
        assert_eq!(traces[0].events(), fixture_events().as_slice(), "{file}");
        let stats = traces[0].stats();
        assert_eq!(stats.peak_live_bytes, 3_151_336);
        assert_eq!(stats.live_at_end_bytes, 1000 + MIB as u64);
        assert_eq!(stats.streams, vec![0, S1]);
    }
}

#[test]
fn truncated_snapshot_is_a_clear_error() {
    let bytes = std::fs::read(format!("{FIXTURES}/snapshot_small.pickle")).unwrap();
    for cut in [1, 2, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = replay::parse("snap.pickle", &bytes[..cut])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("snap.pickle: not a readable pickle ("),
            "cut {cut}: {err}"
        );
        assert!(
            err.ends_with(
                "; expected a file written by torch.cuda.memory._dump_snapshot (pickle protocol 2 to 5)"
            ),
            "cut {cut}: {err}"
        );
    }
}

fn s(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn dict(pairs: Vec<(&str, Value)>) -> Value {
    Value::Dict(
        pairs
            .into_iter()
            .map(|(k, v)| (HashableValue::String(k.to_owned()), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn entry(action: &str, addr: i64, size: Value) -> Value {
    dict(vec![
        ("action", s(action)),
        ("addr", Value::I64(addr)),
        ("size", size),
        ("stream", Value::I64(0)),
        ("frames", Value::List(vec![])),
    ])
}

fn snapshot(entries: Vec<Value>) -> Value {
    dict(vec![
        ("segments", Value::List(vec![])),
        ("device_traces", Value::List(vec![Value::List(entries)])),
    ])
}

fn snap_err(value: &Value) -> String {
    let bytes = serde_pickle::value_to_vec(value, SerOptions::new()).expect("serializes");
    match replay::parse_snapshot("snap.pickle", &bytes) {
        Ok(traces) => panic!("expected an error, parsed {} traces", traces.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn snapshot_of_wrong_structure_is_a_clear_error() {
    let cases = [
        (
            Value::List(vec![]),
            "snap.pickle: `snapshot` is a list; expected a dict from torch.cuda.memory._snapshot() with keys `segments` and `device_traces`",
        ),
        (
            dict(vec![("segments", Value::List(vec![]))]),
            "snap.pickle: `snapshot` has no key `device_traces`; expected a dict from torch.cuda.memory._snapshot() with keys `segments` and `device_traces`",
        ),
        (
            dict(vec![
                ("segments", Value::List(vec![])),
                ("device_traces", Value::I64(3)),
            ]),
            "snap.pickle: `device_traces` is an int; expected a list",
        ),
        (
            snapshot(vec![entry("alloc", 4096, s("abc"))]),
            "snap.pickle: `device_traces[0][0].size` is a str; expected an integer",
        ),
        (
            snapshot(vec![entry("alloc", -1, Value::I64(5))]),
            "snap.pickle: `device_traces[0][0].addr` is -1; expected a non-negative integer below 2^64",
        ),
        (
            snapshot(vec![dict(vec![
                ("action", s("alloc")),
                ("addr", Value::I64(1)),
            ])]),
            "snap.pickle: `device_traces[0][0]` has no key `size`; expected a trace entry with keys `action`, `addr`, `size`, `stream`",
        ),
        (
            snapshot(vec![
                entry("alloc", 4096, Value::I64(5)),
                entry("alloc", 4096, Value::I64(7)),
            ]),
            "snap.pickle: `device_traces[0][1]` allocates address 0x1000, which is still allocated (by `device_traces[0][0]`); expected a free_completed or free_requested entry for it first",
        ),
        (
            snapshot(vec![entry("segment_alloc", 4096, Value::I64(5))]),
            "snap.pickle: no `alloc` entry in `device_traces` and no live block in `segments`; expected a snapshot taken after torch.cuda.memory._record_memory_history() and some allocations",
        ),
    ];
    for (value, expected) in cases {
        assert_eq!(snap_err(&value), expected);
    }
}

#[test]
fn snapshot_free_requested_is_used_when_no_free_completed_follows() {
    // free_requested of 0x1000, then the address is allocated again with no
    // free_completed in between: the free happens at the free_requested.
    let value = snapshot(vec![
        entry("alloc", 0x1000, Value::I64(100)),
        entry("alloc", 0x2000, Value::I64(50)),
        entry("free_requested", 0x1000, Value::I64(100)),
        entry("free_completed", 0x2000, Value::I64(50)),
        entry("alloc", 0x1000, Value::I64(200)),
        entry("oom", 0, Value::I64(0)),
    ]);
    let bytes = serde_pickle::value_to_vec(&value, SerOptions::new()).unwrap();
    let traces = replay::parse_snapshot("snap.pickle", &bytes).unwrap();
    assert_eq!(
        traces[0].events(),
        &[
            Event::Alloc {
                slot: 0,
                bytes: 100,
                stream: 0
            },
            Event::Alloc {
                slot: 1,
                bytes: 50,
                stream: 0
            },
            Event::Free { slot: 0 },
            Event::Free { slot: 1 },
            Event::Alloc {
                slot: 2,
                bytes: 200,
                stream: 0
            },
        ]
    );
}

#[test]
fn snapshot_with_two_devices_gives_one_trace_each() {
    let device = |addr| Value::List(vec![entry("alloc", addr, Value::I64(64))]);
    let value = dict(vec![
        ("segments", Value::List(vec![])),
        (
            "device_traces",
            Value::List(vec![device(0x10), Value::List(vec![]), device(0x20)]),
        ),
    ]);
    let bytes = serde_pickle::value_to_vec(&value, SerOptions::new()).unwrap();
    let traces = replay::parse_snapshot("s.pickle", &bytes).unwrap();
    let names: Vec<&str> = traces.iter().map(Trace::name).collect();
    assert_eq!(names, ["s.pickle[device 0]", "s.pickle[device 2]"]);
}

#[test]
fn trace_from_events_checks_slots() {
    let ok = Trace::from_events(
        "x",
        vec![
            Event::Alloc {
                slot: 0,
                bytes: 1,
                stream: 0,
            },
            Event::Free { slot: 0 },
        ],
    );
    assert_eq!(ok.map(|t| t.slots()), Ok(1));
    let err = Trace::from_events(
        "x",
        vec![Event::Alloc {
            slot: 1,
            bytes: 1,
            stream: 0,
        }],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "event 0: alloc of slot 1; expected slot 0 (slots are numbered in order of allocation)"
    );
    assert_eq!(err.invariant, alloc_core::CoreInvariant::R1);
    let err = Trace::from_events(
        "x",
        vec![
            Event::Alloc {
                slot: 0,
                bytes: 1,
                stream: 0,
            },
            Event::Free { slot: 0 },
            Event::Free { slot: 0 },
        ],
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "event 2: slot 0 is freed twice");
    assert_eq!(err.invariant, alloc_core::CoreInvariant::R2);
}

#[test]
fn snapshot_blocks_without_address_count_from_their_segment() {
    let block =
        |size: i64, state: &str| dict(vec![("size", Value::I64(size)), ("state", s(state))]);
    let segment = |address: Option<i64>| {
        let mut pairs = vec![
            ("device", Value::I64(0)),
            ("stream", Value::I64(0)),
            (
                "blocks",
                Value::List(vec![
                    block(512, "inactive"),
                    block(1024, "active_allocated"),
                ]),
            ),
        ];
        if let Some(a) = address {
            pairs.push(("address", Value::I64(a)));
        }
        dict(pairs)
    };
    let with = |address| {
        dict(vec![
            ("segments", Value::List(vec![segment(address)])),
            (
                "device_traces",
                Value::List(vec![Value::List(vec![entry(
                    "alloc",
                    0x9000,
                    Value::I64(64),
                )])]),
            ),
        ])
    };
    // The live block at 0x1200 (no `requested_size`: its `size` is used).
    let bytes = serde_pickle::value_to_vec(&with(Some(0x1000)), SerOptions::new()).unwrap();
    let traces = replay::parse_snapshot("snap.pickle", &bytes).unwrap();
    assert_eq!(
        traces[0].events(),
        &[
            Event::Alloc {
                slot: 0,
                bytes: 1024,
                stream: 0
            },
            Event::Alloc {
                slot: 1,
                bytes: 64,
                stream: 0
            }
        ]
    );
    assert_eq!(
        snap_err(&with(None)),
        "snap.pickle: `segments[0].blocks[0]` has no key `address`; expected a block with keys `size`, `state` and \
         `address` (or a segment `address` to count from)"
    );
}

// ---- no panics on arbitrary input ----------------------------------------

mod arbitrary_input {
    use alloc_core::replay;
    use proptest::prelude::*;

    use super::FIXTURES;

    fn fixture() -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/snapshot_small.pickle")).unwrap()
    }

    /// Parsing returns a trace or an error naming the file; it never panics.
    fn parses_or_names_the_file(name: &str, bytes: &[u8]) {
        if let Err(e) = replay::parse(name, bytes) {
            assert!(e.to_string().starts_with(name), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes(pickle in any::<bool>(), mut bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if pickle {
                bytes.insert(0, replay::PICKLE_MAGIC);
            }
            parses_or_names_the_file("x.bin", &bytes);
        }

        #[test]
        fn mutated_snapshot(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = fixture();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            parses_or_names_the_file("m.pickle", &bytes);
        }

        #[test]
        fn csv_like_text(text in "[af,0-9#\\- \n]{0,200}") {
            parses_or_names_the_file("t.csv", text.as_bytes());
        }
    }
}
