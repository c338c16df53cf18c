//! The toolkit with `alloc_host::TrackingAllocator` installed: scopes measure
//! real allocations, host budgets refuse, device buffers are charged to the
//! scope entered when they are allocated.

use std::sync::Arc;

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};
use alloc_host::TrackingAllocator;
use alloc_toolkit::{
    BudgetScope, Estimator, ToolkitError, memory_info, prometheus, register_device,
    unregister_device,
};

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

#[test]
fn memory_info_sees_the_tracked_heap() {
    let keep = vec![7u8; 4 << 20];
    let info = memory_info();
    assert!(info.tracked.installed);
    // Other test threads' pending batches can hide up to BATCH_BYTES each
    // from the process figure; this thread's own charges are applied.
    let slack = 4 * alloc_host::BATCH_BYTES as u64;
    assert!(info.tracked.live + slack >= 4 << 20, "{:?}", info.tracked);
    assert!(info.tracked.peak >= info.tracked.live);
    drop(keep);
}

#[test]
fn host_budget_refuses_and_device_budget_is_checked() {
    let engine = CachingAllocator::new(SimBackend::new(256 << 20), Config::default());
    let scope = BudgetScope::new("budgeted", Some(1 << 20), Some(8 << 20)).unwrap();
    {
        let _in = scope.enter();
        let mut v: Vec<u8> = Vec::new();
        assert!(
            v.try_reserve(2 << 20).is_err(),
            "over the 1 MiB host budget"
        );
        assert!(v.try_reserve(512 << 10).is_ok());
    }
    let a = scope.allocate(&engine, 6 << 20, SimStream(0)).unwrap();
    assert_eq!(scope.stats().device.live_bytes, a.capacity() as u64);
    let err = scope.allocate(&engine, 4 << 20, SimStream(0)).unwrap_err();
    assert!(
        matches!(err, ToolkitError::DeviceBudgetExceeded { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("budgeted"), "{err}");
    drop(a);
    assert_eq!(scope.stats().device.live_bytes, 0);
    let b = scope.allocate(&engine, 4 << 20, SimStream(0)).unwrap();
    drop(b);
}

#[test]
fn estimator_learns_bytes_per_item_from_scope_peaks() {
    let engine = CachingAllocator::new(SimBackend::new(1 << 30), Config::default());
    // The engine's first allocations grow its own tables (host memory): warm
    // it up with the same sizes so the steps measure only their own work.
    for items in [10usize, 20, 40, 80] {
        drop(engine.allocate(items * 65536, SimStream(0)).unwrap());
    }
    let mut est = Estimator::new();
    for items in [10usize, 20, 40, 80] {
        est.measure("step", items as u64, || {
            let host: Vec<u64> = vec![1; items * 1000]; // 8,000 B per item
            let dev = engine.allocate(items * 65536, SimStream(0)).unwrap(); // 64 KiB per item
            drop(dev);
            host.len()
        })
        .unwrap();
    }
    let h = est.host().unwrap();
    let d = est.device().unwrap();
    assert!((h.per_item - 8000.0).abs() < 50.0, "{h:?}");
    assert!((d.per_item - 65536.0).abs() < 600.0, "{d:?}");
    assert!(d.predict(80) >= 80 * 65536);
}

#[test]
fn prometheus_covers_registered_devices_and_open_scopes() {
    let engine = Arc::new(CachingAllocator::new(
        SimBackend::new(64 << 20),
        Config::default(),
    ));
    register_device("tracked-test-dev", engine.clone());
    let s = alloc_host::scope("export-me");
    let buf = engine.allocate(1 << 20, SimStream(0)).unwrap();
    let text = prometheus();
    assert!(text.contains("scope=\"export-me\""), "{text}");
    assert!(text.contains(
        "alloc_device_allocated_bytes{device=\"tracked-test-dev\",backend=\"sim\"} 1048576"
    ));
    let line = text
        .lines()
        .find(|l| l.starts_with("alloc_scope_device_live_bytes{scope=\"export-me\""))
        .unwrap();
    assert!(line.ends_with(" 1048576"), "{line}");
    drop(buf);
    drop(s);
    unregister_device("tracked-test-dev");
}

/// A layer that keeps the `u64` values recorded on spans after creation.
#[derive(Clone, Default)]
struct Recorded(Arc<std::sync::Mutex<Vec<(String, u64)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorded {
    fn on_record(
        &self,
        _id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct V<'a>(&'a Recorded);
        impl tracing::field::Visit for V<'_> {
            fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                self.0.0.lock().unwrap().push((f.name().to_owned(), v));
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        values.record(&mut V(self));
    }
}

#[test]
fn the_scope_peak_is_recorded_on_the_span() {
    use tracing_subscriber::prelude::*;
    let rec = Recorded::default();
    let subscriber = tracing_subscriber::registry()
        .with(alloc_toolkit::ScopeLayer::new())
        .with(rec.clone());
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!(
            "decode",
            alloc.host_peak_bytes = tracing::field::Empty,
            alloc.device_peak_bytes = tracing::field::Empty
        );
        span.in_scope(|| {
            let v = vec![1u8; 3 << 20];
            std::hint::black_box(&v);
        });
    });
    let got = rec.0.lock().unwrap().clone();
    let host = got
        .iter()
        .find(|(f, _)| f == "alloc.host_peak_bytes")
        .unwrap()
        .1;
    let device = got
        .iter()
        .find(|(f, _)| f == "alloc.device_peak_bytes")
        .unwrap()
        .1;
    assert!((3 << 20..(3 << 20) + (64 << 10)).contains(&host), "{got:?}");
    assert_eq!(device, 0);
}

#[test]
fn report_and_json_see_the_installed_allocator() {
    let text = alloc_toolkit::memory_report();
    assert!(!text.contains("not installed"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&alloc_toolkit::json()).unwrap();
    assert_eq!(v["memory"]["tracked"]["installed"], true);
    let f = alloc_toolkit::Facts::now();
    assert!(f.memory.tracked.installed);
    assert!(
        !alloc_toolkit::recommendations()
            .iter()
            .any(|r| r.rule == "tracking-off")
    );
}
