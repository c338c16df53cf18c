//! The GPU kit's `run.sh` on this machine: without a CUDA driver it must end
//! with `VERDICT: NO-GPU` and exit non-zero (2). The kit here holds only
//! `run.sh` and the `cuda_info` example that cargo built for the tests; the
//! full kit is built by `gpu/bundle.sh` (release builds, minutes).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn run_sh_without_a_gpu_says_no_gpu_and_fails() {
    if alloc_cuda::cuda_available() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: a CUDA driver is installed here; run.sh's NO-GPU verdict is not exercised"
        );
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let target = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let cuda_info = target.join("examples").join("cuda_info");
    assert!(cuda_info.exists(), "{} not built", cuda_info.display());
    let kit = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kit-no-gpu");
    let _ = std::fs::remove_dir_all(&kit);
    std::fs::create_dir_all(kit.join("bin")).expect("kit dir");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gpu/run.sh");
    std::fs::copy(&src, kit.join("run.sh")).expect("copy run.sh");
    std::fs::copy(&cuda_info, kit.join("bin/cuda_info")).expect("copy cuda_info");
    let out = Command::new("bash")
        .arg(kit.join("run.sh"))
        .env("OUT", kit.join("results"))
        .output()
        .expect("run run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("VERDICT: NO-GPU"), "{stdout}");
    let summary = std::fs::read_to_string(kit.join("results/SUMMARY")).expect("SUMMARY");
    assert_eq!(summary.lines().last(), Some("VERDICT: NO-GPU"), "{summary}");
    assert!(summary.contains("CUDA unavailable"), "{summary}");
    assert!(kit.join("results/env.log").exists());
    assert!(kit.join("results/cuda_info.log").exists());
}
