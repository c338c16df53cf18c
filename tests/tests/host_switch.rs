//! The global tracking switch: `is_installed` never touches it. One test: it
//! switches tracking off for the whole process.

use alloc_host::{ScopeBuilder, TrackingAllocator, is_installed, set_tracking, untracked};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

#[test]
fn probing_installation_while_tracking_is_off_charges_nothing() {
    assert!(is_installed());
    assert!(untracked(is_installed), "detected inside untracked too");
    let s = ScopeBuilder::new("off").enter().unwrap();
    set_tracking(false);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let prober = std::thread::spawn(move || {
        let mut n = 0u64;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(is_installed());
            n += 1;
        }
        n
    });
    for i in 0..200_000u32 {
        std::hint::black_box(Box::new(i));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = prober.join().unwrap();
    assert!(is_installed(), "installed while tracking is off");
    set_tracking(true);
    let st = s.stats();
    assert_eq!(st.allocations, 0, "{probes} probes ran; {st:?}");
    assert_eq!(st.live_bytes, 0);
}
