//! A request's scope follows its task across `.await` points and tokio worker
//! threads (`Instrument::in_scope`), and work handed to `spawn_blocking`
//! (`ScopeHandle::bind`): hundreds of concurrent requests on a multi-thread
//! runtime, each with exact figures.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use alloc_host::{Instrument, ScopeBuilder, ScopeHandle, TrackingAllocator};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

/// Returns Pending once (waking itself), so the task is rescheduled, possibly
/// on another worker; allocates nothing.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Request `i`: holds a buffer across awaits, allocates more after each,
/// keeps one block past its end; its figures are known exactly.
async fn request(i: usize) -> Vec<u8> {
    let a = std::hint::black_box(vec![1u8; 1000 + i]);
    YieldOnce(false).await;
    let b = std::hint::black_box(vec![2u8; 5000 + 3 * i]);
    YieldOnce(false).await;
    drop(a);
    YieldOnce(false).await;
    let keep = std::hint::black_box(vec![3u8; 100 + i]);
    drop(b);
    keep
}

#[test]
fn per_request_figures_are_exact_across_awaits_and_workers() {
    const REQUESTS: usize = 400;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let handles: Vec<ScopeHandle> = (0..REQUESTS)
        .map(|i| ScopeBuilder::new(&format!("request {i}")).build().unwrap())
        .collect();
    let kept = rt.block_on(async {
        let tasks: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(i, h)| tokio::spawn(request(i).in_scope(h)))
            .collect();
        let mut kept = Vec::with_capacity(REQUESTS);
        for t in tasks {
            kept.push(t.await.unwrap());
        }
        kept
    });
    for (i, h) in handles.iter().enumerate() {
        let s = h.stats();
        let (a, b, k) = ((1000 + i) as u64, (5000 + 3 * i) as u64, (100 + i) as u64);
        assert_eq!(
            (
                s.allocations,
                s.frees,
                s.bytes_allocated,
                s.live_bytes,
                s.peak_bytes
            ),
            (3, 2, a + b + k, k, a + b),
            "request {i}: {s:?}"
        );
    }
    drop(kept);
    for h in &handles {
        assert_eq!(h.stats().live_bytes, 0);
    }
    drop(rt);
}

#[test]
fn spawn_blocking_work_is_charged_through_bind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let h = ScopeBuilder::new("blocking request").build().unwrap();
    let h2 = h.clone();
    let len = rt.block_on(async move {
        let work = h2.bind(|| std::hint::black_box(vec![0u8; 12345]).len());
        tokio::task::spawn_blocking(work).await.unwrap()
    });
    assert_eq!(len, 12345);
    let s = h.stats();
    assert_eq!(
        (s.allocations, s.bytes_allocated, s.live_bytes),
        (1, 12345, 0),
        "{s:?}"
    );
}

#[test]
fn an_in_scope_future_is_send_and_static() {
    fn assert_spawnable<F: Future + Send + 'static>(_: &F) {}
    let h = ScopeBuilder::new("s").build().unwrap();
    let f = async { vec![0u8; 1].len() }.in_scope(&h);
    assert_spawnable(&f);
}
