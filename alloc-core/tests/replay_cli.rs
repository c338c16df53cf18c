//! The `alloc-replay` binary: JSON and table output, exit codes and messages
//! for bad arguments (2) and bad files (1).

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_alloc-replay");
const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../traces");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("alloc-replay runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

#[test]
fn json_output_has_one_object_per_trace_and_config() {
    let trace = format!("{TRACES}/resnet50_infer.csv");
    let out = run(&[
        "--json",
        "--config",
        "expandable_segments:False",
        "--config",
        "",
        &trace,
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let labels = ["expandable_segments:False", "default"];
    for (line, label) in lines.iter().zip(labels) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        assert_eq!(v["trace"], "resnet50_infer.csv");
        assert_eq!(v["config"], label);
        for key in [
            "peak_requested_bytes",
            "peak_reserved_bytes",
            "device_allocs",
            "device_frees",
        ] {
            assert!(v[key].is_u64(), "{key} in {line}");
        }
        assert_eq!(
            v["peak_requested_bytes"], v["trace_peak_live_bytes"],
            "{line}"
        );
        let efficiency = v["efficiency"].as_f64().expect("efficiency is a number");
        assert!(efficiency > 0.0 && efficiency <= 1.0, "{line}");
        assert!(v["ns_per_op"].as_f64().is_some_and(|ns| ns > 0.0), "{line}");
        assert_eq!(v["ooms"], 0, "{line}");
    }
}

#[test]
fn table_output_names_trace_and_configs() {
    let trace = format!("{FIXTURES}/snapshot_small.pickle");
    let out = run(&["--backend", "host", "--config=max_split_size_mb:20", &trace]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(
            "snapshot_small.pickle: 6 allocs, 4 frees, peak live 3.0 MiB, 2 streams; backend host\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("peak requested  peak reserved  efficiency  device allocs  device frees"),
        "{stdout}"
    );
    assert!(stdout.contains("\n  max_split_size_mb:20 "), "{stdout}");
}

fn assert_usage_error(args: &[&str], message: &str) {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.starts_with(&format!("alloc-replay: {message}\n\nusage: alloc-replay ")),
        "{args:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?}");
}

#[test]
fn bad_arguments_exit_2_with_the_usage() {
    let trace = format!("{TRACES}/resnet50_infer.csv");
    assert_usage_error(
        &[],
        "no trace file given; expected one or more FILE arguments",
    );
    assert_usage_error(&["--frobnicate", &trace], "unknown option `--frobnicate`");
    assert_usage_error(
        &["--backend", "tpu", &trace],
        "--backend `tpu` is not a backend; expected sim or host",
    );
    assert_usage_error(
        &["--backend", "cuda", &trace],
        "--backend cuda: the CUDA backend is not built into this binary; it comes with the alloc-cuda crate. \
         Use --backend sim or --backend host here",
    );
    assert_usage_error(
        &[&trace, "--config"],
        "--config needs a value: an ALLOC_CONF string such as expandable_segments:False",
    );
    assert_usage_error(
        &["--capacity", "80GB", &trace],
        "--capacity `80GB` is not a size; expected an unsigned integer of bytes with an optional KiB, MiB, GiB or \
         TiB suffix, e.g. 80GiB",
    );
    assert_usage_error(
        &["--backend", "host", "--capacity", "1GiB", &trace],
        "--capacity applies to --backend sim only (host memory is the machine's)",
    );
    assert_usage_error(
        &["--repeat", "0", &trace],
        "--repeat `0` is not a number of runs; expected an integer from 1 to 1000",
    );
    let out = run(&["--config", "max_split_size_mb:4", &trace]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "alloc-replay: --config `max_split_size_mb:4`: config key `max_split_size_mb`"
        ),
        "{stderr}"
    );
}

#[test]
fn help_prints_usage_and_exits_0() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("usage: alloc-replay [--backend sim|host]"));
}

#[test]
fn bad_files_exit_1_with_the_parser_error() {
    let dir = std::env::temp_dir().join(format!("alloc-replay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "# h\nop,id,bytes,stream\na,0,64,0\na,1,abc,0\n").unwrap();
    let bad = bad.to_str().unwrap();
    let good = format!("{TRACES}/resnet50_infer.csv");
    let out = run(&[&good, bad]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "alloc-replay: {bad}:4: bytes `abc` is not a number; expected an unsigned integer\n"
        )
    );
    assert!(
        out.stdout.is_empty(),
        "files are all parsed before any replay"
    );

    let missing = dir.join("missing.csv");
    let out = run(&[missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with(&format!(
        "alloc-replay: cannot read {}: ",
        missing.display()
    )));

    let truncated = dir.join("cut.pickle");
    let bytes = std::fs::read(format!("{FIXTURES}/snapshot_small.pickle")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = run(&[truncated.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "alloc-replay: {}: not a readable pickle (",
            truncated.display()
        )),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--dump-snapshot` writes PyTorch's snapshot pickle after the replay, and
/// that pickle replays again (its history holds every allocation).
#[test]
fn dump_snapshot_writes_a_pickle_that_replays_again() {
    let trace = format!("{TRACES}/resnet50_infer.csv");
    let out_path =
        std::env::temp_dir().join(format!("replay_cli_dump_{}.pickle", std::process::id()));
    let out_arg = out_path.to_str().expect("UTF-8 temp path");
    let out = run(&["--dump-snapshot", out_arg, &trace]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let first = text(&out.stdout);
    let bytes = std::fs::read(&out_path).expect("the snapshot was written");
    let value =
        serde_pickle::value_from_slice(&bytes, serde_pickle::DeOptions::new()).expect("a pickle");
    let serde_pickle::Value::Dict(top) = value else {
        panic!("not a dict")
    };
    for key in [
        "segments",
        "device_traces",
        "allocator_settings",
        "external_annotations",
    ] {
        assert!(
            top.contains_key(&serde_pickle::HashableValue::String(key.into())),
            "{key}"
        );
    }
    let again = run(&[out_arg]);
    let _ = std::fs::remove_file(&out_path);
    assert_eq!(
        again.status.code(),
        Some(0),
        "stderr: {}",
        text(&again.stderr)
    );
    let allocs = |s: &str| {
        s.split(": ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned)
    };
    let second = text(&again.stdout);
    assert_eq!(allocs(&first), allocs(&second), "{first}\n{second}");
    assert!(allocs(&first).is_some_and(|n| n == "1460"), "{first}");
}

#[test]
fn dump_snapshot_needs_one_trace_and_one_config() {
    let trace = format!("{TRACES}/resnet50_infer.csv");
    let out = run(&[
        "--dump-snapshot",
        "/nonexistent/never-written.pickle",
        "--config",
        "",
        "--config",
        "expandable_segments:False",
        &trace,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--dump-snapshot writes one snapshot") && stderr.contains("2 configs"),
        "{stderr}"
    );
}
