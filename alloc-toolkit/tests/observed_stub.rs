//! The observe-only device against alloc-cuda's stub driver (a libcuda.so
//! over host memory): memory that *another* allocator holds on the device is
//! seen by the guards, the monitor and the metrics. Its own binary: the stub
//! is the process's driver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloc_cuda::CudaAllocator;
use alloc_cuda_stub::stub;
use alloc_toolkit::{
    DeviceFigure, Level, MemoryMonitor, Metrics, MonitorConfig, ObservedDevice, Threshold,
    ensure_device_available, register_device,
};

const MIB: usize = 1 << 20;

#[test]
fn an_observed_gpu_sees_memory_another_library_holds() {
    let (stub, _lock) = stub(false);
    stub.set_capacity(1024 * MIB);
    let gpu = Arc::new(ObservedDevice::cuda(0).expect("the stub's device 0"));
    register_device("observed-gpu", gpu);
    assert!(ensure_device_available("observed-gpu", 700 << 20, 1.2).is_ok());

    let events = Arc::new(Mutex::new(Vec::new()));
    let (up, down) = (events.clone(), events.clone());
    let monitor = MemoryMonitor::new(MonitorConfig {
        interval: Duration::from_millis(10),
        capacity: 10,
    })
    .unwrap()
    .with_threshold(
        Threshold::device(
            "observed-gpu",
            DeviceFigure::Used,
            Level::Fraction(0.5),
            move |e| up.lock().unwrap().push(("crossed", e.value)),
        )
        .recover_below(Level::Fraction(0.25))
        .on_recover(move |e| down.lock().unwrap().push(("recovered", e.value))),
    )
    .unwrap();
    monitor.tick_at(Duration::ZERO);

    // Another library's allocator takes 600 MiB of the 1 GiB device.
    let other = CudaAllocator::new(0).expect("a second allocator on the stub");
    let stream = other.context().default_stream();
    let held = other.allocate(600 * MIB, &stream).expect("fits");
    let err = ensure_device_available("observed-gpu", 400 << 20, 1.2).unwrap_err();
    assert!(err.to_string().contains("observed-gpu"), "{err}");
    assert!(ensure_device_available("observed-gpu", 300 << 20, 1.2).is_ok());
    monitor.tick_at(Duration::from_millis(10));
    let text = Metrics::new().render();
    let free = text
        .lines()
        .find(|l| {
            l.starts_with(
                "alloc_device_free_bytes{device=\"observed-gpu\",backend=\"cuda-observed\"}",
            )
        })
        .expect("the observed device's free bytes are exported");
    assert!(
        free.ends_with(&format!(" {}", (1024 - 600) * MIB)),
        "{free}"
    );

    drop(held);
    other.empty_cache();
    monitor.tick_at(Duration::from_millis(20));
    let got = events.lock().unwrap().clone();
    assert_eq!(got, [("crossed", (600 * MIB) as u64), ("recovered", 0)]);
}
