//! One scope charges host and device memory: a request's device peak next to its
//! host peak. Host memory through the installed tracking allocator, device
//! memory through the caching engine on the simulated backend.

use std::hint::black_box;

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};
use alloc_host::{ScopeBuilder, TrackingAllocator, scope};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

const MIB: usize = 1 << 20;

#[test]
fn a_scope_reports_host_and_device_live_and_peak() {
    let device = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let request = scope("request");
    let host = black_box(vec![0u8; 3 * MIB]);
    let a = device.allocate(8 * MIB, SimStream(0)).unwrap();
    {
        let _inner = scope("attention");
        let b = device.allocate(4 * MIB, SimStream(0)).unwrap();
        drop(b);
    }
    let s = request.stats();
    // Host: the 3 MiB vector plus the engine's own bookkeeping for the new
    // segment (block records), which this request caused and is charged for.
    assert!(s.live_bytes >= 3 * MIB as u64 && s.live_bytes < 3 * MIB as u64 + (256 << 10));
    assert_eq!(s.device.live_bytes, 8 * MIB as u64);
    assert_eq!(s.device.peak_bytes, 12 * MIB as u64);
    assert_eq!((s.device.allocations, s.device.frees), (2, 1));
    // The device buffer's free is charged back to the request from anywhere.
    let h = request.handle();
    drop(request);
    std::thread::scope(|t| {
        t.spawn(move || drop(a));
    });
    let s = h.stats();
    assert_eq!(s.device.live_bytes, 0);
    assert_eq!(s.device.peak_bytes, 12 * MIB as u64);
    drop(host);
}

#[test]
fn device_buffers_allocated_on_a_pool_thread_are_charged_to_the_request() {
    let device = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    let req = ScopeBuilder::new("pooled request").build().unwrap();
    std::thread::scope(|s| {
        for i in 0..3usize {
            let (req, device) = (req.clone(), &device);
            s.spawn(move || {
                let _in = req.enter();
                let b = device.allocate((i + 1) * MIB, SimStream(i as u32)).unwrap();
                drop(b);
            });
        }
    });
    let s = req.stats();
    assert_eq!(s.device.allocations, 3);
    assert_eq!(s.device.bytes_allocated, 6 * MIB as u64);
    assert_eq!(s.device.live_bytes, 0);
    assert!(s.device.peak_bytes >= 3 * MIB as u64 && s.device.peak_bytes <= 6 * MIB as u64);
}
