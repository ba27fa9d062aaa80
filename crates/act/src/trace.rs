//! Traces: the `tracing` spans act opens and the W3C trace context it stores
//! with every event, so one request and every reaction it causes share one
//! trace id, across processes and restarts.
//!
//! # Spans
//! | span | opened around | fields |
//! | --- | --- | --- |
//! | `act.action` (info) | [`crate::Act::act`], [`crate::Act::execute`], [`crate::Context::act`] | `stream`, `action`, `trace_id`, `span_id`, `parent` |
//! | `act.append` (debug) | the store append of an action or of [`crate::Context::append`] | `stream`, `events` |
//! | `act.correlate` (debug) | one correlation step | `job`, `page`, `read` |
//! | `act.claim` (debug) | one claim | `queues` (asked), `claimed` |
//! | `act.batch` (info) | one claimed queue's batch | `queue`, `reactions`, `events` |
//! | `act.handle` (debug: one per handler call, so `act=debug` turns it on; see BENCH.md for its cost) | one handler call | `queue`, `reaction`, `event`, `attempt`, `trace_id`, `span_id`, `parent` |
//!
//! # Propagation rules
//! Every event carries the trace context of the action that appended it in
//! [`crate::Causation::trace`] (stored with the causation, which every backend
//! keeps as one JSON value, so nothing changes in a schema and events stored
//! before carry none).
//! - An action ([`crate::Act::act`]) started with no trace context gets a new
//!   random trace id ([`TraceContext::root`]); one given through
//!   [`crate::Invocation::trace`] (e.g. from an HTTP request's `traceparent`)
//!   is continued: same trace id, a new span id. The events it appends carry
//!   `00-<trace id>-<the action's span id>-01`.
//! - A handler call's span records `trace_id` and `parent` (the span id) from
//!   its event's context, and gets a span id of its own
//!   ([`crate::Context::trace`]; pass it on to outgoing calls).
//! - What the handler appends through [`crate::Context::act`] or
//!   [`crate::Context::append`] continues the handler's context: the same
//!   trace id, a new span id whose parent is the handler's.
//!
//! An event without a trace context (stored before, or appended directly to
//! the store) starts a new trace at its handler.
//!
//! # OpenTelemetry
//! A [`TracePropagator`] connects these contexts to a real tracer: `extract`
//! is called on the `act.action` span of an action given a context and on
//! every `act.handle` span of an event that carries one (set the
//! OpenTelemetry parent there), and `inject` is called inside those spans
//! to read back their real context, which is then stored and handed on
//! instead of the one act derives. Set one per application with
//! [`crate::ActBuilder::trace_propagator`], or for every application the
//! process builds with [`set_default_propagator`] (what a command line does
//! when it turns tracing on, without the code that builds the application
//! knowing).
//!
//! The `act-otel` crate is the ready-made one: its `OtelPropagator` over
//! `tracing-opentelemetry`, and an OTLP/HTTP exporter to install beside the
//! log subscriber. `act_cli` programs turn it on with `--otlp-endpoint`. This
//! crate itself depends only on `tracing`.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize};

/// A W3C trace context: a `traceparent` value,
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lower case. Only
/// valid values can be built ([`TraceContext::parse`]), so every stored one
/// is valid; a stored value that is not (written by other code) reads back
/// as none.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TraceContext(String);

impl TraceContext {
    /// A new trace: random trace and span ids, sampled.
    pub fn root() -> Self {
        let trace = loop {
            let t = fastrand::u128(..);
            if t != 0 {
                break t;
            }
        };
        TraceContext::from_ids(trace, nonzero_span(), 1)
    }

    /// A context in the same trace with a new random span id (whose parent
    /// is this context's span).
    pub fn child(&self) -> Self {
        let trace = u128::from_str_radix(self.trace_id(), 16).unwrap_or(1);
        TraceContext::from_ids(trace, nonzero_span(), self.flags())
    }

    fn from_ids(trace: u128, span: u64, flags: u8) -> Self {
        // `00-{trace:032x}-{span:016x}-{flags:02x}`, without the formatting
        // machinery (a third of a one-event action's cost in memory).
        let mut buf = [b'-'; 55];
        buf[..2].copy_from_slice(b"00");
        buf[3..19].copy_from_slice(&hex_digits((trace >> 64) as u64));
        buf[19..35].copy_from_slice(&hex_digits(trace as u64));
        buf[36..52].copy_from_slice(&hex_digits(span));
        buf[53..].copy_from_slice(&hex_digits(u64::from(flags))[14..]);
        TraceContext(ascii(&buf))
    }

    /// A context from a tracer's ids (e.g. an OpenTelemetry span context's
    /// trace id, span id and trace flags). `None` when either id is zero
    /// (an invalid context). Costs one small string allocation.
    pub fn from_parts(trace_id: u128, span_id: u64, flags: u8) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then(|| TraceContext::from_ids(trace_id, span_id, flags))
    }

    /// Parses a `traceparent` header value (version `00`; upper case hex is
    /// accepted and stored lower case). `None` when it is not one, or its
    /// trace or span id is all zeros, as the W3C spec requires.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let s = traceparent.trim().to_ascii_lowercase();
        let b = s.as_bytes();
        let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
        let ok = b.len() == 55
            && &s[..3] == "00-"
            && b[35] == b'-'
            && b[52] == b'-'
            && hex(3..35)
            && hex(36..52)
            && hex(53..55)
            && s[3..35].bytes().any(|c| c != b'0')
            && s[36..52].bytes().any(|c| c != b'0');
        ok.then_some(TraceContext(s))
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.0
    }

    /// The trace id: 32 lower-case hex digits.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The span id: 16 lower-case hex digits.
    pub fn span_id(&self) -> &str {
        &self.0[36..52]
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.0[53..55], 16).unwrap_or(1)
    }
}

/// The 16 lower-case hex digits of `x`, zero padded (`{x:016x}`).
fn hex_digits(x: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = HEX[((x >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The 32 lower-case hex digits of `x`, zero padded (`{x:032x}`), as a
/// string: a correlation id.
pub(crate) fn hex_string(x: u128) -> String {
    let mut buf = [0u8; 32];
    buf[..16].copy_from_slice(&hex_digits((x >> 64) as u64));
    buf[16..].copy_from_slice(&hex_digits(x as u64));
    ascii(&buf)
}

/// Hex digits and dashes as a string (they are ASCII: the check never
/// fails).
fn ascii(bytes: &[u8]) -> String {
    std::str::from_utf8(bytes)
        .map(String::from)
        .unwrap_or_default()
}

fn nonzero_span() -> u64 {
    loop {
        let s = fastrand::u64(..);
        if s != 0 {
            return s;
        }
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({})", self.0)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TraceContext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TraceContext::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not a W3C traceparent: {s:?}")))
    }
}

/// Reads an optional trace context, taking a value that is not one as none:
/// a bad trace context never makes an event undecodable.
pub(crate) fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TraceContext>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_str().and_then(TraceContext::parse)))
}

/// Connects act's trace contexts to a tracer (OpenTelemetry). Set one with
/// [`crate::ActBuilder::trace_propagator`] or [`set_default_propagator`];
/// without either, [`Derived`] derives contexts as the module docs say. Both methods run on the hot path
/// (once per action and per handler call): keep them cheap.
pub trait TracePropagator: Send + Sync {
    /// The context of the current span (called inside `act.action` and
    /// `act.handle` spans, after [`TracePropagator::extract`]; never for a
    /// span no subscriber enabled), to store with
    /// the events an action appends and to hand to a handler. `None`: act
    /// derives one (a child of the parent context, or a new trace).
    fn inject(&self) -> Option<TraceContext>;

    /// Makes `span` a child of the remote context `ctx` (the event's, or the
    /// one an action was given).
    fn extract(&self, ctx: &TraceContext, span: &tracing::Span);
}

/// The default propagator: no tracer; act derives every context itself
/// (span fields only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Derived;

impl TracePropagator for Derived {
    fn inject(&self) -> Option<TraceContext> {
        None
    }

    fn extract(&self, _ctx: &TraceContext, _span: &tracing::Span) {}
}

static DEFAULT: OnceLock<Arc<dyn TracePropagator>> = OnceLock::new();

/// Sets the propagator of every application built after this call without
/// an explicit [`crate::ActBuilder::trace_propagator`] (which still wins):
/// a command line that turns OpenTelemetry on calls it before it builds the
/// application. Once per process: returns false (and changes nothing) when
/// a default was already set. Applications built before keep theirs.
pub fn set_default_propagator(propagator: Arc<dyn TracePropagator>) -> bool {
    DEFAULT.set(propagator).is_ok()
}

/// The propagator an [`crate::ActBuilder`] starts with: the one given to
/// [`set_default_propagator`], else [`Derived`]. An atomic load and an `Arc`
/// clone.
pub fn default_propagator() -> Arc<dyn TracePropagator> {
    DEFAULT.get().cloned().unwrap_or_else(|| Arc::new(Derived))
}

/// Opens a span's context: extract the parent into it, then take the
/// propagator's context or derive one. Records `trace_id`, `span_id` and
/// `parent` on the span. A span no subscriber enabled is never asked
/// (inside it, the current span would be its parent's): its context is
/// derived.
pub(crate) fn enter(
    propagator: &dyn TracePropagator,
    parent: Option<&TraceContext>,
    span: &tracing::Span,
) -> TraceContext {
    let injected = if span.is_disabled() {
        None
    } else {
        if let Some(p) = parent {
            propagator.extract(p, span);
        }
        span.in_scope(|| propagator.inject())
    };
    let own =
        injected.unwrap_or_else(|| parent.map_or_else(TraceContext::root, TraceContext::child));
    span.record("trace_id", own.trace_id());
    span.record("span_id", own.span_id());
    if let Some(p) = parent {
        span.record("parent", p.span_id());
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_formatted_as_fmt_does() {
        for v in [
            0,
            1,
            0xf,
            0x10,
            0xdead_beef,
            u128::from(u64::MAX),
            u128::MAX,
        ] {
            assert_eq!(hex_string(v), format!("{v:032x}"));
        }
        for (trace, span, flags) in [(0x4bf9_2f35, u64::MAX, 1), (u128::MAX, 1, 0xab)] {
            let r = TraceContext::from_ids(trace, span, flags);
            assert_eq!(
                r.traceparent(),
                format!("00-{trace:032x}-{span:016x}-{flags:02x}")
            );
        }
    }

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_refused() {
        let t =
            TraceContext::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id(), "00f067aa0ba902b7");
        let c = t.child();
        assert_eq!(c.trace_id(), t.trace_id());
        assert_ne!(c.span_id(), t.span_id());
        assert_eq!(TraceContext::parse(c.traceparent()), Some(c));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        let r = TraceContext::root();
        assert_eq!(TraceContext::parse(r.traceparent()), Some(r));
    }

    #[test]
    fn a_context_from_parts_round_trips_and_zero_ids_are_refused() {
        let t = TraceContext::from_parts(0x4bf9_2f35, 0xf067, 0).unwrap();
        assert_eq!(
            t.traceparent(),
            "00-0000000000000000000000004bf92f35-000000000000f067-00"
        );
        assert_eq!(t.flags(), 0);
        assert_eq!(t.child().flags(), 0, "a child keeps the flags");
        assert_eq!(TraceContext::parse(t.traceparent()), Some(t));
        assert!(TraceContext::from_parts(0, 1, 1).is_none());
        assert!(TraceContext::from_parts(1, 0, 1).is_none());
    }

    /// Answers a fixed context, as a tracer would for the current span.
    struct Fixed(TraceContext);

    impl TracePropagator for Fixed {
        fn inject(&self) -> Option<TraceContext> {
            Some(self.0.clone())
        }
        fn extract(&self, _: &TraceContext, _: &tracing::Span) {}
    }

    #[test]
    fn a_span_no_subscriber_enabled_gets_a_derived_context() {
        // No subscriber in this thread: the span is disabled, and inside
        // it the current span would be another's.
        let fixed = Fixed(TraceContext::root());
        let parent = TraceContext::root();
        let span = tracing::info_span!("act.handle", trace_id = tracing::field::Empty);
        assert!(span.is_disabled());
        let own = enter(&fixed, Some(&parent), &span);
        assert_eq!(own.trace_id(), parent.trace_id());
        assert_ne!(own, fixed.0);
    }
}
