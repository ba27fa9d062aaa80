//! [`OtelPropagator`]: act's trace contexts as OpenTelemetry span contexts,
//! through `tracing-opentelemetry`'s span extension.

use act::{TraceContext, TracePropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Connects act's spans to OpenTelemetry: the span context of the span that
/// appends an event is what act stores in the event's meta, and the handler
/// span of that event becomes its child, so one request and every reaction
/// it causes form one trace, across processes.
///
/// It needs `tracing_opentelemetry`'s layer in the subscriber (what
/// [`crate::install`] makes); without it (or for a span the layer's filter
/// leaves out) [`TracePropagator::inject`] answers `None` and act derives
/// the context itself, as with [`act::trace::Derived`].
///
/// Costs, per action and per handler call: `extract` parses two hex ids and
/// sets the parent of a span not yet started (a registry lookup);
/// `inject` reads the current span's context (a registry lookup and a
/// clone) and formats a `traceparent` (one small allocation).
///
/// Set it for every application the process builds with
/// `act::trace::set_default_propagator(Arc::new(OtelPropagator))` (before
/// they are built), or for one with `ActBuilder::trace_propagator`; the
/// [crate docs](crate) show a whole worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtelPropagator;

impl TracePropagator for OtelPropagator {
    fn inject(&self) -> Option<TraceContext> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        to_trace_context(span.span_context())
    }

    fn extract(&self, ctx: &TraceContext, span: &tracing::Span) {
        let Some(remote) = to_span_context(ctx) else {
            return;
        };
        // In a handler's `ctx.act`, the new action span is already a child
        // of the handler span it continues: keep that local parent rather
        // than replace it with the same span marked remote.
        let current = tracing::Span::current().context();
        let here = current.span();
        let here = here.span_context();
        if here.trace_id() == remote.trace_id() && here.span_id() == remote.span_id() {
            return;
        }
        // Fails only when the layer is absent or the span already started:
        // then act's own context stands.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

/// An OpenTelemetry span context as a `traceparent`; `None` when invalid
/// (no OpenTelemetry span).
pub fn to_trace_context(sc: &SpanContext) -> Option<TraceContext> {
    if !sc.is_valid() {
        return None;
    }
    TraceContext::from_parts(
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
        sc.trace_flags().to_u8(),
    )
}

/// A `traceparent` as a remote OpenTelemetry span context.
pub fn to_span_context(ctx: &TraceContext) -> Option<SpanContext> {
    let trace = TraceId::from_hex(ctx.trace_id()).ok()?;
    let span = SpanId::from_hex(ctx.span_id()).ok()?;
    let sc = SpanContext::new(
        trace,
        span,
        TraceFlags::new(ctx.flags()),
        true,
        TraceState::NONE,
    );
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_and_a_span_context_convert_both_ways() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let sc = to_span_context(&t).unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(to_trace_context(&sc), Some(t));
        let unsampled =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!to_span_context(&unsampled).unwrap().is_sampled());
        assert_eq!(to_trace_context(&SpanContext::empty_context()), None);
    }

    #[test]
    fn without_the_layer_inject_answers_none() {
        let span = tracing::info_span!("act.action");
        assert_eq!(span.in_scope(|| OtelPropagator.inject()), None);
    }
}
