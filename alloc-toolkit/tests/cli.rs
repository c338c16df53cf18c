//! The `memory-info` binary, run as a user would.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `memory-info ARGS` on a pseudo-terminal (util-linux `script`), as a
/// user at a terminal would; `None` where `script` is missing.
fn run_on_a_terminal(args: &str) -> Option<(i32, String)> {
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_memory-info"));
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn watch_refreshes_in_place_and_stops_after_count() {
    let t = std::time::Instant::now();
    // On a terminal: the screen is cleared before each frame.
    if let Some((code, out)) = run_on_a_terminal("--watch 0.1 --count 3") {
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.matches("\x1b[H\x1b[2J").count(), 3, "{out:?}");
        assert!(t.elapsed() >= std::time::Duration::from_millis(200));
    } else {
        eprintln!("*** no `script` (util-linux): the terminal case was not run ***");
    }
    // Into a pipe: the frames one after another, no escape codes.
    let t = std::time::Instant::now();
    let (code, out, err) = run(&["--watch", "0.1", "--count", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "escape codes into a pipe: {out:?}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("process RSS")).count(),
        3,
        "{out}"
    );
    assert!(t.elapsed() >= std::time::Duration::from_millis(200));
}

#[test]
fn json_watch_writes_one_json_document_per_line() {
    let (code, out, err) = run(&["--json", "--watch", "0.1", "--count", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "escape codes in JSON lines: {out:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("not one JSON document per line ({e}): {l:?}"));
        assert!(v["memory"]["process"]["rss"].as_u64().unwrap() > 0);
    }
}

#[test]
fn watch_exits_quietly_when_the_reader_goes_away() {
    // `memory-info --watch 0.1 | head -3`: head reads three lines and exits.
    let mut child = Command::new(env!("CARGO_BIN_EXE_memory-info"))
        .args(["--watch", "0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        lines.next().unwrap().unwrap();
    }
    drop(lines); // the pipe's read end closes
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("memory-info --watch still running 10 s after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.is_empty(), "not quiet: {err}");
}

#[test]
fn a_watch_interval_out_of_range_names_the_value_and_the_range() {
    for bad in ["1e20", "0.01", "100000", "inf", "NaN", "-1", "soon"] {
        let (code, out, err) = run(&["--watch", bad, "--count", "1"]);
        assert_eq!(code, 2, "--watch {bad}: {out}{err}");
        assert!(
            err.contains(bad),
            "--watch {bad}: the value is not named: {err}"
        );
        assert!(
            err.contains("0.1") && err.contains("86400"),
            "--watch {bad}: the range is not given: {err}"
        );
    }
    for good in ["0.1", "86400"] {
        let (code, _, err) = run(&["--json", "--watch", good, "--count", "1"]);
        assert_eq!(code, 0, "--watch {good}: {err}");
    }
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
