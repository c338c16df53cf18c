//! Without a CUDA driver every entry point returns the clear error, and
//! nothing panics. On a machine with a driver this is reported as SKIPPED.

/// Writes to stderr past the test harness's output capture, so a skip is
/// seen in every `cargo test` run, not only when a test fails.
macro_rules! skipped {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

use alloc_cuda::{CudaAllocator, CudaError, PinnedPool};

fn driver_present() -> bool {
    if alloc_cuda::cuda_available() {
        eprintln!(
            "SKIPPED: a CUDA driver is installed here; the no-driver errors are not exercised"
        );
        return true;
    }
    false
}

#[test]
fn allocator_reports_missing_driver() {
    if driver_present() {
        return;
    }
    let e = CudaAllocator::new(0).expect_err("no driver");
    assert_eq!(e, CudaError::Unavailable);
    assert!(
        e.to_string()
            .starts_with("CUDA unavailable: libcuda not found; "),
        "{e}"
    );
    assert!(e.to_string().contains("LD_LIBRARY_PATH"));
    assert!(matches!(PinnedPool::new(0), Err(CudaError::Unavailable)));
    assert!(matches!(
        CudaAllocator::global(0),
        Err(CudaError::Unavailable)
    ));
    assert!(matches!(
        CudaAllocator::global(10_000),
        Err(CudaError::DeviceOutOfRange { device: 10_000, .. })
    ));
}

#[test]
fn cuda_info_example_says_no_gpu_without_a_driver() {
    if driver_present() {
        return;
    }
    // The example binary is built by `cargo test` (examples are test targets'
    // dependencies); run it where it lies next to this test binary.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let example = dir.join("examples").join("cuda_info");
    if !example.exists() {
        skipped!("SKIPPED: {} not built", example.display());
        return;
    }
    let out = std::process::Command::new(&example)
        .output()
        .expect("run cuda_info");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 2: no GPU here (the kit's NO-GPU), with the reason
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains("status: no-gpu: no driver: libcuda.so"),
        "{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
