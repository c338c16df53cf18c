//! The GPU kit's `run.sh`, run here against the stub driver (and without
//! any driver): it reaches every step, prints its plan, classifies each step
//! PASS / FAIL / SKIP / NOT RUN with a reason, ends `VERDICT: FAIL` when a
//! GPU test is broken on purpose (`STUB_CORRUPT_FILL=1`: the stub's kernel
//! writes a wrong value), `SKIP`s a missing torch and a sanitizer that cannot
//! start, and says `NO-GPU` (exit 2) only when there is no driver or no
//! device; a toolkit stub library or a driver/library mismatch is FAIL.
//!
//! The kit here is assembled from what `cargo test` built (the debug `gpu`
//! test binary stands for both test builds, the debug examples for the
//! release ones, one trace; `cargo test -p alloc-cuda` builds them, a run of
//! `--test kit` alone uses what was built last); `gpu/bundle.sh` builds the
//! real one (release builds, minutes). torch is hidden (a `torch` package that fails to
//! import, first on `PYTHONPATH`) and `compute-sanitizer` is a script that
//! refuses the device as it does under gVisor, so the outcome does not
//! depend on what this machine has installed.

use std::path::{Path, PathBuf};
use std::process::Command;

const STEPS: [&str; 12] = [
    "preflight",
    "device",
    "release_tests",
    "capture",
    "torch_plugin",
    "debug_tests",
    "bench_ours_es_off",
    "bench_ours_es_on",
    "bench_torch_es_off",
    "bench_torch_es_on",
    "resnet50",
    "sanitizer",
];

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The newest `gpu-<hash>` test executable cargo built (tests/gpu.rs).
fn gpu_test_binary() -> Option<PathBuf> {
    let deps = target_dir().join("deps");
    std::fs::read_dir(&deps)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("gpu-") && !name.contains('.')
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// A kit under the test's temporary directory, or `None` (with SKIPPED
/// printed) when a piece is missing.
fn assemble(name: &str) -> Option<PathBuf> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let examples = target_dir().join("examples");
    let (cuda_info, gpu_alloc) = (examples.join("cuda_info"), examples.join("gpu_alloc"));
    let Some(gpu) = gpu_test_binary() else {
        skipped("the gpu test binary is not built");
        return None;
    };
    if !cuda_info.exists() || !gpu_alloc.exists() {
        skipped("the examples are not built");
        return None;
    }
    let kit = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&kit);
    for d in ["bin", "python", "traces", "fake/torch", "fake/bin"] {
        std::fs::create_dir_all(kit.join(d)).expect("kit dir");
    }
    copy(&crate_dir.join("gpu/run.sh"), &kit.join("run.sh"));
    copy(&gpu, &kit.join("bin/gpu-tests-release"));
    copy(&gpu, &kit.join("bin/gpu-tests-debug"));
    copy(&cuda_info, &kit.join("bin/cuda_info"));
    copy(&gpu_alloc, &kit.join("bin/gpu_alloc"));
    for py in [
        "python/alloc_cuda_torch.py",
        "python/kit_summary.py",
        "examples/pytorch_plugin.py",
        "examples/torch_replay.py",
        "examples/torch_resnet_check.py",
    ] {
        let p = crate_dir.join(py);
        copy(&p, &kit.join("python").join(p.file_name().expect("name")));
    }
    copy(
        &crate_dir.join("../traces/bert_serving.csv"),
        &kit.join("traces/bert_serving.csv"),
    );
    // this machine's glibc is new enough for what it built
    std::fs::write(kit.join("GLIBC_NEEDED"), "2.2.5\n").expect("GLIBC_NEEDED");
    std::fs::write(
        kit.join("fake/torch/__init__.py"),
        "raise ImportError('hidden by the kit test')\n",
    )
    .expect("fake torch");
    let sanitizer = kit.join("fake/bin/compute-sanitizer");
    std::fs::write(
        &sanitizer,
        "#!/bin/sh\necho '========= Error: Device not supported. (the kit test)'\nexit 1\n",
    )
    .expect("fake sanitizer");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&sanitizer, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Some(kit)
}

fn skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: the kit on the stub: {why}");
}

struct Run {
    code: Option<i32>,
    stdout: String,
    summary: String,
}

/// Runs the kit with the stub driver on the loader path (unless `driver`
/// is false) and `env` set.
fn run(kit: &Path, driver: bool, env: &[(&str, &str)]) -> Run {
    let stub_dir = Path::new(alloc_cuda_stub::LIBCUDA_VM)
        .parent()
        .expect("stub dir")
        .to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg(kit.join("run.sh"))
        .env("OUT", kit.join("results"))
        .env("PYTHONPATH", kit.join("fake"))
        .env("GPU_ALLOC_ITERS", "2000")
        .env_remove("STUB_CORRUPT_FILL")
        .env_remove("STUB_CUINIT_RESULT")
        .env(
            "PATH",
            format!(
                "{}:{}",
                kit.join("fake/bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    if driver {
        cmd.env("LD_LIBRARY_PATH", &stub_dir);
    } else {
        cmd.env_remove("LD_LIBRARY_PATH");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run run.sh");
    let summary = std::fs::read_to_string(kit.join("results/SUMMARY")).unwrap_or_default();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        summary,
    }
}

/// The status SUMMARY's final table gives step `name`.
fn status<'a>(summary: &'a str, name: &str) -> &'a str {
    summary
        .lines()
        .skip_while(|l| !l.starts_with("SUMMARY:"))
        .find(|l| l.split_whitespace().next() == Some(name))
        .map_or("missing", |l| {
            let rest = l.trim_start()[name.len()..].trim_start();
            if rest.starts_with("NOT RUN") {
                "NOT RUN"
            } else {
                rest.split_whitespace().next().unwrap_or("missing")
            }
        })
}

fn usable_here() -> bool {
    if !cfg!(target_os = "linux") || alloc_cuda_stub::LIBCUDA_VM.is_empty() {
        skipped("the stub driver is built for Linux only");
        return false;
    }
    if alloc_cuda::cuda_available() {
        skipped("a CUDA driver is installed here; the stub would not be the one loaded");
        return false;
    }
    true
}

#[test]
fn on_the_stub_every_step_runs_and_the_verdict_is_pass() {
    if !usable_here() {
        return;
    }
    let Some(kit) = assemble("kit-stub-pass") else {
        return;
    };
    let r = run(&kit, true, &[]);
    let all = format!("{}\n{}", r.stdout, r.summary);
    assert_eq!(r.code, Some(0), "{all}");
    assert_eq!(r.stdout.lines().last(), Some("VERDICT: PASS"), "{all}");
    assert!(r.stdout.contains("planned: 235 s in all"), "{all}");
    for step in STEPS {
        let s = status(&r.summary, step);
        assert!(
            ["PASS", "SKIP"].contains(&s),
            "step {step}: {s}\n{}",
            r.summary
        );
    }
    for step in [
        "preflight",
        "device",
        "release_tests",
        "capture",
        "debug_tests",
        "bench_ours_es_off",
        "bench_ours_es_on",
    ] {
        assert_eq!(status(&r.summary, step), "PASS", "{step}\n{}", r.summary);
    }
    assert!(r.summary.contains("torch does not import"), "{}", r.summary);
    assert!(
        r.summary
            .contains("the sanitizer could not run here: ========= Error: Device not supported"),
        "{}",
        r.summary
    );
    // the benchmark's rows for RESULTS.md, both settings (kit_summary.py
    // needs python3)
    if Command::new("python3").arg("--version").output().is_ok() {
        assert!(r.summary.contains("| off | 4096 |"), "{}", r.summary);
        assert!(r.summary.contains("| on | bert_serving |"), "{}", r.summary);
    }
    assert!(r.summary.contains("libcuda mapped: "), "{}", r.summary);
}

#[test]
fn a_gpu_test_broken_on_purpose_makes_the_verdict_fail() {
    if !usable_here() {
        return;
    }
    let Some(kit) = assemble("kit-stub-broken") else {
        return;
    };
    let r = run(&kit, true, &[("STUB_CORRUPT_FILL", "1")]);
    let all = format!("{}\n{}", r.stdout, r.summary);
    assert_eq!(r.code, Some(1), "{all}");
    assert_eq!(r.stdout.lines().last(), Some("VERDICT: FAIL"), "{all}");
    assert_eq!(status(&r.summary, "release_tests"), "FAIL", "{all}");
    assert!(
        r.summary
            .contains("kernel_writes_and_reads_through_buffers"),
        "{all}"
    );
    // every step was still reached
    for step in STEPS {
        assert_ne!(status(&r.summary, step), "NOT RUN", "{step}\n{all}");
        assert_ne!(status(&r.summary, step), "missing", "{step}\n{all}");
    }
}

#[test]
fn no_device_is_no_gpu_and_a_broken_driver_is_fail_with_a_hint() {
    if !usable_here() {
        return;
    }
    let Some(kit) = assemble("kit-stub-driver") else {
        return;
    };
    let r = run(&kit, true, &[("STUB_CUINIT_RESULT", "100")]);
    assert_eq!(r.code, Some(2), "{}", r.stdout);
    assert_eq!(r.stdout.lines().last(), Some("VERDICT: NO-GPU"));
    assert!(r.summary.contains("CUDA_ERROR_NO_DEVICE"), "{}", r.summary);
    assert_eq!(status(&r.summary, "release_tests"), "NOT RUN");
    for (code, says) in [
        ("34", "CUDA_ERROR_STUB_LIBRARY"),
        ("803", "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"),
    ] {
        let r = run(&kit, true, &[("STUB_CUINIT_RESULT", code)]);
        assert_eq!(r.code, Some(1), "{code}: {}", r.stdout);
        assert_eq!(r.stdout.lines().last(), Some("VERDICT: FAIL"));
        assert!(r.summary.contains(says), "{}", r.summary);
        assert!(r.summary.contains("hint: "), "{}", r.summary);
    }
    // no driver library at all
    let r = run(&kit, false, &[]);
    assert_eq!(r.code, Some(2), "{}", r.stdout);
    assert_eq!(r.stdout.lines().last(), Some("VERDICT: NO-GPU"));
    assert!(r.summary.contains("no driver: libcuda.so"), "{}", r.summary);
    assert!(kit.join("results/preflight.log").exists());
    assert!(kit.join("results/device.log").exists());
}
