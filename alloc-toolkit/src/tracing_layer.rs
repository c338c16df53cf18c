//! [`ScopeLayer`]: a `tracing_subscriber` layer that makes spans scopes, so
//! code instrumented with `tracing` gets per-span host and device memory.
//!
//! - **Which spans**: those at or above a level (default: all) whose target
//!   starts with one of the given prefixes (default: any), so that the spans
//!   of every dependency do not each become a scope.
//! - **The scope name**: the span's name, followed by the values of chosen
//!   fields, `request{route=/infer}`. Scope names are what the per-name
//!   aggregates and metrics are keyed by, so a field in the name must take few
//!   values (a route, a model, a stage; never a request id). As a guard, each
//!   field keeps at most [`ScopeLayer::with_max_values`] distinct values
//!   (default 16); later values are written `other`.
//! - **The peak, back on the span**: a span that declares the fields
//!   [`HOST_PEAK_FIELD`] or [`DEVICE_PEAK_FIELD`] (as
//!   `tracing::field::Empty`) gets its scope's peak recorded in them each
//!   time it is exited, so log lines and other layers see it.
//!
//! A span's scope is created with the span, as a child of its parent span's
//! scope (or of the creating thread's current scope); entering the span
//! enters the scope on that thread and exiting leaves it. The scope closes
//! when the span closes. No borrow of the layer's thread-local state is held
//! while scope guards drop or are made, since those run soft-limit callbacks,
//! which may themselves enter spans.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use alloc_host::{ScopeBuilder, ScopeGuard, ScopeHandle};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The span field that receives the scope's host peak, bytes.
pub const HOST_PEAK_FIELD: &str = "alloc.host_peak_bytes";
/// The span field that receives the scope's device peak, bytes.
pub const DEVICE_PEAK_FIELD: &str = "alloc.device_peak_bytes";

/// The layer. Add it to a `tracing_subscriber::Registry`:
/// `tracing_subscriber::registry().with(ScopeLayer::new())`.
#[derive(Clone, Debug)]
pub struct ScopeLayer {
    max_level: Level,
    targets: Vec<String>,
    name_fields: Vec<String>,
    max_values: usize,
    seen: Arc<Mutex<HashMap<String, HashSet<String>>>>,
}

impl Default for ScopeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ScopeLayer {
    /// Every span a scope named after the span.
    pub fn new() -> Self {
        ScopeLayer {
            max_level: Level::TRACE,
            targets: Vec::new(),
            name_fields: Vec::new(),
            max_values: 16,
            seen: Arc::default(),
        }
    }

    /// Only spans at `level` or more important (`INFO` leaves out `DEBUG`
    /// and `TRACE` spans).
    pub fn with_max_level(mut self, level: Level) -> Self {
        self.max_level = level;
        self
    }

    /// Only spans whose target starts with one of `prefixes` (module paths
    /// such as `my_server`).
    pub fn with_targets<S: Into<String>>(mut self, prefixes: impl IntoIterator<Item = S>) -> Self {
        self.targets = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Appends the values of these fields to the scope name (see the module
    /// docs: fields with few values only).
    pub fn with_name_fields<S: Into<String>>(
        mut self,
        fields: impl IntoIterator<Item = S>,
    ) -> Self {
        self.name_fields = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Distinct values kept per name field before later ones become `other`.
    pub fn with_max_values(mut self, n: usize) -> Self {
        self.max_values = n;
        self
    }

    /// Whether spans of `meta` become scopes.
    pub fn selects(&self, meta: &Metadata<'_>) -> bool {
        meta.is_span()
            && *meta.level() <= self.max_level
            && (self.targets.is_empty()
                || self
                    .targets
                    .iter()
                    .any(|t| meta.target().starts_with(t.as_str())))
    }

    /// The scope name for a span: its name and its name fields' values.
    fn scope_name(&self, attrs: &Attributes<'_>) -> String {
        let name = attrs.metadata().name();
        if self.name_fields.is_empty() {
            return name.to_owned();
        }
        let mut v = FieldValues {
            wanted: &self.name_fields,
            found: Vec::new(),
        };
        attrs.record(&mut v);
        if v.found.is_empty() {
            return name.to_owned();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = format!("{name}{{");
        for (i, (field, value)) in v.found.iter().enumerate() {
            let set = seen.entry(field.clone()).or_default();
            let known = set.contains(value) || set.len() < self.max_values;
            if known {
                set.insert(value.clone());
            }
            let shown = if known { value.as_str() } else { "other" };
            let _ = write!(out, "{}{field}={shown}", if i > 0 { "," } else { "" });
        }
        out.push('}');
        out
    }
}

/// Collects the values of the wanted fields, in the span's field order.
struct FieldValues<'a> {
    wanted: &'a [String],
    found: Vec<(String, String)>,
}

impl Visit for FieldValues<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.wanted.iter().any(|w| w == field.name()) {
            self.found.push((field.name().to_owned(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.wanted.iter().any(|w| w == field.name()) {
            self.found
                .push((field.name().to_owned(), format!("{value:?}")));
        }
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

/// Records the scope's peaks into the span's peak fields, if it declares them.
fn record_peaks(meta: &'static Metadata<'static>, id: &Id, handle: &ScopeHandle) {
    let fields = meta.fields();
    let (host, device) = (
        fields.field(HOST_PEAK_FIELD),
        fields.field(DEVICE_PEAK_FIELD),
    );
    if host.is_none() && device.is_none() {
        return;
    }
    let s = handle.stats();
    let (hp, dp) = (s.peak_bytes, s.device.peak_bytes);
    tracing::dispatcher::get_default(|d| {
        if let Some(f) = &host {
            d.record(
                id,
                &tracing::span::Record::new(
                    &fields.value_set(&[(f, Some(&hp as &dyn tracing::Value))]),
                ),
            );
        }
        if let Some(f) = &device {
            d.record(
                id,
                &tracing::span::Record::new(
                    &fields.value_set(&[(f, Some(&dp as &dyn tracing::Value))]),
                ),
            );
        }
    });
}

impl<S> Layer<S> for ScopeLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !self.selects(attrs.metadata()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        // The nearest ancestor span that has a scope.
        let parent = span
            .scope()
            .skip(1)
            .find_map(|p| p.extensions().get::<SpanScope>().map(|s| s.0.clone()));
        let mut builder = ScopeBuilder::new(&self.scope_name(attrs));
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
        // Entering runs due soft-limit callbacks: no borrow held here.
        let guard = handle.enter();
        ENTERED.with(|e| e.borrow_mut().push((id.clone(), guard)));
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        // Guards must drop innermost first: take the spans entered after
        // this one and this one off the stack, drop their guards with no
        // borrow held (a drop runs soft-limit callbacks, which may enter
        // spans), then enter the later ones again.
        let Some(taken) = ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            let pos = e.iter().rposition(|(i, _)| i == id)?;
            Some(e.drain(pos..).collect::<Vec<_>>())
        }) else {
            return;
        };
        let mut again = Vec::with_capacity(taken.len().saturating_sub(1));
        let mut this = None;
        for (i, g) in taken.into_iter().rev() {
            let h = g.handle();
            drop(g);
            if &i == id {
                this = Some(h);
            } else {
                again.push((i, h));
            }
        }
        for (i, h) in again.into_iter().rev() {
            let g = h.enter();
            ENTERED.with(|e| e.borrow_mut().push((i, g)));
        }
        if let (Some(h), Some(span)) = (this, ctx.span(id)) {
            record_peaks(span.metadata(), id, &h);
        }
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
                let tree = alloc_host::scope_tree();
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

    #[test]
    fn level_and_target_filter_which_spans_become_scopes() {
        let layer = ScopeLayer::new()
            .with_max_level(Level::INFO)
            .with_targets(["alloc_toolkit::tracing_layer"]);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let before = alloc_host::current();
            let debug = tracing::debug_span!("chatty");
            let g = debug.enter();
            assert_eq!(alloc_host::current(), before, "DEBUG is below INFO");
            drop(g);
            let other = tracing::info_span!(target: "hyper::proto", "dependency");
            let g = other.enter();
            assert_eq!(alloc_host::current(), before, "another target");
            drop(g);
            let ours = tracing::info_span!("ours");
            let g = ours.enter();
            assert_ne!(alloc_host::current(), before);
            drop(g);
        });
    }

    #[test]
    fn name_fields_are_in_the_scope_name_and_bounded() {
        let layer = ScopeLayer::new()
            .with_name_fields(["route"])
            .with_max_values(2);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let mut names = Vec::new();
            for route in ["/a", "/b", "/c", "/a"] {
                let span = tracing::info_span!("request", route, request_id = 7);
                let _g = span.enter();
                names.push(alloc_host::ScopeHandle::current().name());
            }
            assert_eq!(
                names,
                [
                    "request{route=/a}",
                    "request{route=/b}",
                    "request{route=other}",
                    "request{route=/a}"
                ]
            );
        });
    }
}
