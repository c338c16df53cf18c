//! A soft-limit callback that is itself instrumented with `tracing`, run while
//! the `ScopeLayer` leaves a span: no panic, no re-entry.
//!
//! The only test of this binary, on purpose: due soft-limit callbacks run on
//! whichever thread next enters or leaves a scope, so a sibling test opening
//! scopes on another harness thread could run this test's callback itself
//! (the case under test, a callback run while this thread leaves a span, would
//! then not be exercised, and the count could be read before the sibling's
//! call finished). Alone in its binary, only this thread enters scopes.

use std::sync::Arc;

use alloc_host::TrackingAllocator;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

#[test]
fn an_instrumented_soft_limit_callback_does_not_panic() {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    use tracing_subscriber::prelude::*;
    let fired = Arc::new(AtomicU32::new(0));
    let f = fired.clone();
    let budgeted = alloc_host::ScopeBuilder::new("soft-budgeted")
        .soft_limit(1 << 20)
        .on_soft_limit(move |_| {
            // The callback is itself instrumented: it enters a span while
            // the layer is leaving another.
            let span = tracing::info_span!("in-callback");
            let _g = span.enter();
            f.fetch_add(1, Relaxed);
        })
        .build()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(alloc_toolkit::ScopeLayer::new());
    tracing::subscriber::with_default(subscriber, || {
        let _in = budgeted.enter();
        let outer = tracing::info_span!("outer");
        let _o = outer.enter();
        let span = tracing::info_span!("work");
        let g = span.enter();
        let v = vec![1u8; 2 << 20]; // over the soft limit
        std::hint::black_box(&v);
        drop(g); // leaving `work` runs the callback
        drop(v);
        assert_eq!(fired.load(Relaxed), 1);
        let outer_scope = alloc_host::current();
        drop(_o);
        assert_ne!(alloc_host::current(), outer_scope, "outer left");
    });
}
