//! `Instrument`: a future that enters a scope around every poll, so that a
//! request's scope follows its task across `.await` points and worker threads.

use core::future::Future;
use core::mem::ManuallyDrop;
use core::pin::Pin;
use core::task::{Context, Poll};

use super::handle::ScopeHandle;

/// Runs a future inside a scope: `fut.in_scope(&handle)` enters the scope
/// around every poll (and around dropping the future), on whatever thread
/// polls it, like `tracing::Instrument` does for spans. The returned future
/// owns a clone of the handle, so it is `'static` and `Send` when `fut` is and
/// can be given to `tokio::spawn`.
///
/// ```
/// use alloc_scope::{Instrument, ScopeBuilder};
///
/// let request = ScopeBuilder::new("request").build().unwrap();
/// let fut = async { vec![0u8; 4096].len() }.in_scope(&request);
/// // e.g. tokio::spawn(fut); here a minimal executor:
/// let n = futures_lite_block_on(fut);
/// assert_eq!(n, 4096);
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     use std::task::{Context, Poll, Waker};
/// #     let mut f = std::pin::pin!(f);
/// #     let mut cx = Context::from_waker(Waker::noop());
/// #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// ```
pub trait Instrument: Future + Sized {
    /// Enters `handle`'s scope around every poll of this future.
    fn in_scope(self, handle: &ScopeHandle) -> InScope<Self> {
        InScope {
            inner: ManuallyDrop::new(self),
            handle: handle.clone(),
        }
    }
}

impl<F: Future> Instrument for F {}

/// A future running inside a scope (see [`Instrument`]).
#[must_use = "futures do nothing unless polled"]
pub struct InScope<F> {
    inner: ManuallyDrop<F>,
    handle: ScopeHandle,
}

impl<F> InScope<F> {
    /// The scope this future runs in.
    pub fn handle(&self) -> &ScopeHandle {
        &self.handle
    }
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of an
        // `InScope` (no method hands it out by value, `Drop` drops it in place),
        // and `InScope<F>` is `Unpin` only when `F` is (auto trait).
        let this = unsafe { self.get_unchecked_mut() };
        let _in = this.handle.enter();
        // SAFETY: as above, `inner` stays where it is for as long as `self`
        // is pinned.
        let inner = unsafe { Pin::new_unchecked(&mut *this.inner) };
        inner.poll(cx)
    }
}

impl<F> Drop for InScope<F> {
    fn drop(&mut self) {
        let _in = self.handle.enter();
        // SAFETY: `inner` is dropped exactly once, here, in place (so a pinned
        // future is not moved), and never used again.
        unsafe { ManuallyDrop::drop(&mut self.inner) }
    }
}
