//! The Python parts: every script compiles (`python3 -m py_compile`), and the
//! logic that needs no torch or GPU passes its unit tests
//! (`python/test_alloc_cuda_torch.py`). Without python3 the tests say
//! SKIPPED loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `python3`, or `None` after printing SKIPPED.
fn python(test: &str) -> Option<&'static str> {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => Some("python3"),
        _ => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: python3 not found");
            None
        }
    }
}

fn scripts() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["python", "examples"] {
        for e in std::fs::read_dir(crate_dir().join(dir)).expect("read dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "py") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_python_script_compiles() {
    let Some(py) = python("py_compile") else {
        return;
    };
    let files = scripts();
    assert!(files.len() >= 6, "{files:?}");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pycache");
    let out = Command::new(py)
        .env("PYTHONPYCACHEPREFIX", &tmp)
        .args(["-m", "py_compile"])
        .args(&files)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_helpers_pass_their_unit_tests() {
    let Some(py) = python("unit tests") else {
        return;
    };
    let dir: &Path = &crate_dir().join("python");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pycache");
    let out = Command::new(py)
        .current_dir(dir)
        .env("PYTHONPYCACHEPREFIX", &tmp)
        .args(["-m", "unittest", "-v", "test_alloc_cuda_torch"])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
}
