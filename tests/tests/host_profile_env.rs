//! Switching heap sampling on at run time reaches the thread that allocated
//! before (the main thread, whose first allocation read an empty
//! `ALLOC_PROFILE_RATE`), and the environment variable sets the rate in a new
//! process (`1k` = 1024 bytes) or is refused with a message that names the
//! value. Its own binary (no harness): it needs the main thread and
//! process-wide state.

#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

use alloc_host::profile::{Filter, Kind, RATE_ENV, profile_filtered, sample_rate};

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("child-rate") => {
            assert_eq!(sample_rate(), 1024, "ALLOC_PROFILE_RATE=1k");
            return;
        }
        Some("child-bad") => {
            assert_eq!(sample_rate(), 0, "a bad value leaves sampling off");
            return;
        }
        _ => {}
    }
    if std::env::var_os(RATE_ENV).is_some() {
        eprintln!("unset {RATE_ENV} to run this test");
        std::process::exit(1);
    }
    // The main thread has allocated with sampling off (the runtime's start).
    assert_eq!(sample_rate(), 0);
    alloc_host::set_sample_rate(1);
    let kept: Vec<Vec<u8>> = {
        let _g = alloc_host::scope("main-thread");
        (0..10).map(|_| Vec::with_capacity(1000)).collect()
    };
    let p = profile_filtered(Kind::InUse, Filter::Name("main-thread".into()));
    assert_eq!(
        p.total_count().round() as usize,
        11,
        "10 blocks and the Vec holding them"
    );
    drop(kept);
    alloc_host::set_sample_rate(0);

    let exe = std::env::current_exe().unwrap();
    let ok = std::process::Command::new(&exe)
        .arg("child-rate")
        .env(RATE_ENV, "1k")
        .status()
        .unwrap();
    assert!(ok.success(), "child with {RATE_ENV}=1k");
    let out = std::process::Command::new(&exe)
        .arg("child-bad")
        .env(RATE_ENV, "lots")
        .output()
        .unwrap();
    assert!(out.status.success(), "child with a bad value");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ALLOC_PROFILE_RATE=lots") && err.contains("524288"),
        "{err}"
    );
    println!("host_profile_env: 1 passed, 0 failed");
}
