//! The `memory-info` binary, run as a user would.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memory-info"))
        .args(args)
        .output()
        .expect("memory-info runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_the_tables_and_the_recommendations() {
    let (code, out, err) = run(&[]);
    assert_eq!(code, 0, "{err}");
    for row in ["system", "process RSS", "tracked heap", "recommendations:"] {
        assert!(
            out.lines().any(|l| l.starts_with(row)),
            "{row} missing:\n{out}"
        );
    }
    assert!(out.contains("GPU"), "says what it found about GPUs:\n{out}");
}

#[test]
fn json_parses_and_matches_the_machine() {
    let (code, out, err) = run(&["--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    let total = v["memory"]["system"]["total"].as_u64().unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, kb * 1024);
    assert!(v["memory"]["process"]["rss"].as_u64().unwrap() > 0);
    assert!(v["recommendations"].is_array());
}

#[test]
fn watch_refreshes_in_place_and_stops_after_count() {
    let t = std::time::Instant::now();
    let (code, out, err) = run(&["--watch", "0.1", "--count", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("\x1b[H\x1b[2J").count(), 3, "{out:?}");
    assert!(t.elapsed() >= std::time::Duration::from_millis(200));
}

#[test]
fn bad_arguments_are_refused_with_the_usage() {
    for args in [&["--frobnicate"][..], &["--watch", "-1"], &["--count", "0"]] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains("usage: memory-info"), "{err}");
    }
    let (code, _, err) = run(&["--help"]);
    assert_eq!((code, err.contains("--watch")), (0, true));
}
