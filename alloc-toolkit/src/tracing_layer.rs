//! [`ScopeLayer`]: a `tracing_subscriber` layer that makes every span a scope,
//! so code instrumented with `tracing` gets per-span host and device memory
//! for free.
//!
//! A span's scope is created with the span, as a child of its parent span's
//! scope (or of the creating thread's current scope); entering the span enters
//! the scope on that thread and exiting leaves it. The scope closes when the
//! span closes; [`alloc_host::snapshot`] still shows it while it owns memory.

use std::cell::RefCell;

use alloc_host::{ScopeBuilder, ScopeGuard, ScopeHandle};
use tracing::Subscriber;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The layer. Add it to a `tracing_subscriber::Registry`:
/// `tracing_subscriber::registry().with(ScopeLayer::new())`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScopeLayer {
    _private: (),
}

impl ScopeLayer {
    /// The layer.
    pub fn new() -> Self {
        ScopeLayer { _private: () }
    }
}

/// The scope of a span, kept in the span's extensions.
struct SpanScope(ScopeHandle);

thread_local! {
    /// The spans entered on this thread with their scope guards, innermost last.
    static ENTERED: RefCell<Vec<(Id, ScopeGuard)>> = const { RefCell::new(Vec::new()) };
}

/// The scope handle of span `id`, if the layer made one.
pub fn span_scope<S>(ctx: &Context<'_, S>, id: &Id) -> Option<ScopeHandle>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let span = ctx.span(id)?;
    let ext = span.extensions();
    ext.get::<SpanScope>().map(|s| s.0.clone())
}

impl<S> Layer<S> for ScopeLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanScope>().map(|s| s.0.clone()));
        let mut builder = ScopeBuilder::new(span.name());
        if let Some(p) = &parent {
            builder = builder.child_of(p);
        }
        // A full registry leaves the span without a scope: its memory is
        // charged to the enclosing scope, as `alloc_host::scope` does.
        if let Ok(handle) = builder.build() {
            span.extensions_mut().insert(SpanScope(handle));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(handle) = span_scope(&ctx, id) else {
            return;
        };
        let guard = handle.enter();
        ENTERED.with(|e| e.borrow_mut().push((id.clone(), guard)));
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            let Some(pos) = e.iter().rposition(|(i, _)| i == id) else {
                return;
            };
            // Guards must drop innermost first: leave the spans entered after
            // this one, leave this one, then enter those again.
            let above: Vec<(Id, ScopeGuard)> = e.drain(pos + 1..).collect();
            let mut handles = Vec::with_capacity(above.len());
            for (i, g) in above.into_iter().rev() {
                handles.push((i, g.handle()));
                drop(g);
            }
            e.pop();
            for (i, h) in handles.into_iter().rev() {
                let g = h.enter();
                e.push((i, g));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn spans_nest_as_scopes() {
        let subscriber = tracing_subscriber::registry().with(ScopeLayer::new());
        tracing::subscriber::with_default(subscriber, || {
            let before = alloc_host::current();
            let outer = tracing::info_span!("load");
            let _o = outer.enter();
            let in_outer = alloc_host::current();
            assert_ne!(in_outer, before);
            {
                let inner = tracing::info_span!("decode");
                let _i = inner.enter();
                let in_inner = alloc_host::current();
                assert_ne!(in_inner, in_outer);
                let tree = alloc_host::snapshot();
                let node = tree
                    .scopes
                    .iter()
                    .find(|n| n.stats.id == in_inner.to_bits())
                    .unwrap();
                assert_eq!(node.stats.name, "decode");
                assert_eq!(node.parent, Some(in_outer.to_bits()));
            }
            assert_eq!(alloc_host::current(), in_outer);
            drop(_o);
            assert_eq!(alloc_host::current(), before);
        });
    }

    #[test]
    fn out_of_order_exit_restores_the_scopes() {
        let subscriber = tracing_subscriber::registry().with(ScopeLayer::new());
        tracing::subscriber::with_default(subscriber, || {
            let before = alloc_host::current();
            let a = tracing::info_span!("a");
            let b = tracing::info_span!("b");
            let ga = a.enter();
            let gb = b.enter();
            let in_b = alloc_host::current();
            drop(ga); // leave `a` while `b` is still entered
            assert_eq!(alloc_host::current(), in_b);
            drop(gb);
            assert_eq!(alloc_host::current(), before);
        });
    }
}
