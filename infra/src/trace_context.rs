//! W3C trace context (`traceparent`, `tracestate`) across drfleet's hops: AMQP message
//! headers, and the `trace_context` columns of `pf_jobs` and `pf_outbox` (traceparent, then
//! tracestate after a newline when present).
//!
//! Every publisher takes the context from here: [`crate::amqp::publish_command`] (drctl, tests,
//! bench) injects the current span's, the outbox relay the stored row's. Every receiver
//! continues it with [`TraceContext::parent_of`] on the span it opens. With tracing off
//! (no OpenTelemetry layer) spans have no context, so nothing is written or sent: a process
//! that does not trace does not forward a trace either.
//!
//! Incoming values are the sender's text: they are parsed by the W3C propagator, and an
//! invalid or oversized one is dropped, never stored or echoed.

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// W3C caps tracestate at 32 members; 512 bytes keeps a row and a header small.
const MAX_TRACESTATE: usize = 512;

/// One span's W3C context, as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context of the current span, if it is traced.
    pub fn current() -> Option<Self> {
        Self::of(&tracing::Span::current())
    }

    /// The context of `span`, if it is traced (an OpenTelemetry layer is installed and the
    /// span is enabled).
    pub fn of(span: &tracing::Span) -> Option<Self> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut Carrier(&mut carrier));
        Self::from_pairs(
            carrier.remove(TRACEPARENT).as_deref(),
            carrier.remove(TRACESTATE).as_deref(),
        )
    }

    /// Parse and check a traceparent/tracestate pair (what a header or a row held).
    fn from_pairs(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let tp = traceparent?;
        let mut carrier = HashMap::from([(TRACEPARENT.to_string(), tp.to_string())]);
        if let Some(ts) = tracestate.filter(|s| s.len() <= MAX_TRACESTATE) {
            carrier.insert(TRACESTATE.to_string(), ts.to_string());
        }
        let cx = TraceContextPropagator::new().extract(&Carrier(&mut carrier));
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        // Re-serialized, so what is stored and sent is canonical, whatever came in.
        let mut out = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut Carrier(&mut out));
        Some(Self {
            traceparent: out.remove(TRACEPARENT)?,
            tracestate: out.remove(TRACESTATE).filter(|s| !s.is_empty()),
        })
    }

    /// From AMQP message headers; `None` when absent or invalid.
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<Self> {
        let h = headers?.inner();
        let text = |k: &str| match h.get(k) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            Some(AMQPValue::ShortString(s)) => Some(s.as_str()),
            _ => None,
        };
        Self::from_pairs(text(TRACEPARENT), text(TRACESTATE))
    }

    /// Add `traceparent` (and `tracestate`) to `headers`.
    pub fn insert_into(&self, headers: &mut FieldTable) {
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(self.traceparent.as_str().into()),
        );
        if let Some(ts) = &self.tracestate {
            headers.insert(TRACESTATE.into(), AMQPValue::LongString(ts.as_str().into()));
        }
    }

    /// The `trace_context` column's text.
    pub fn to_column(&self) -> String {
        match &self.tracestate {
            Some(ts) => format!("{}\n{ts}", self.traceparent),
            None => self.traceparent.clone(),
        }
    }

    /// From a `trace_context` column; `None` when NULL or invalid.
    pub fn from_column(text: Option<&str>) -> Option<Self> {
        let (tp, ts) = match text?.split_once('\n') {
            Some((tp, ts)) => (tp, Some(ts)),
            None => (text?, None),
        };
        Self::from_pairs(Some(tp), ts)
    }

    /// Make this context the parent of `span` (before the span is first entered). A no-op
    /// when tracing is off.
    pub fn parent_of(&self, span: &tracing::Span) {
        let mut carrier = HashMap::from([(TRACEPARENT.to_string(), self.traceparent.clone())]);
        if let Some(ts) = &self.tracestate {
            carrier.insert(TRACESTATE.to_string(), ts.clone());
        }
        let cx = TraceContextPropagator::new().extract(&Carrier(&mut carrier));
        let _ = span.set_parent(cx);
    }

    /// The W3C trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        self.traceparent.split('-').nth(1).unwrap_or_default()
    }

    /// The W3C parent (span) id (16 hex digits).
    pub fn span_id(&self) -> &str {
        self.traceparent.split('-').nth(2).unwrap_or_default()
    }
}

/// `parent_of` for an optional context: a span opened for a message or a row continues the
/// context it carried, if any.
pub fn continue_from(ctx: Option<&TraceContext>, span: &tracing::Span) {
    if let Some(c) = ctx {
        c.parent_of(span);
    }
}

struct Carrier<'a>(&'a mut HashMap<String, String>);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_context_round_trips_through_headers_and_the_column() {
        let c = TraceContext::from_pairs(Some(TP), Some("vendor=abc")).unwrap();
        assert_eq!(c.traceparent, TP);
        assert_eq!(c.tracestate.as_deref(), Some("vendor=abc"));
        assert_eq!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id(), "00f067aa0ba902b7");
        let mut h = FieldTable::default();
        c.insert_into(&mut h);
        assert_eq!(TraceContext::from_headers(Some(&h)), Some(c.clone()));
        assert_eq!(c.to_column(), format!("{TP}\nvendor=abc"));
        assert_eq!(TraceContext::from_column(Some(&c.to_column())), Some(c));
        let plain = TraceContext::from_column(Some(TP)).unwrap();
        assert_eq!(plain.tracestate, None);
        assert_eq!(plain.to_column(), TP);
    }

    #[test]
    fn invalid_or_missing_values_are_dropped() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::from_column(Some(bad)), None, "{bad:?}");
        }
        assert_eq!(TraceContext::from_column(None), None);
        assert_eq!(TraceContext::from_headers(None), None);
        let mut h = FieldTable::default();
        h.insert(TRACEPARENT.into(), AMQPValue::LongLongInt(7));
        assert_eq!(TraceContext::from_headers(Some(&h)), None);
        // What is kept is re-serialized: no stray bytes of the input travel on.
        let smuggled = format!("{TP}\r\nx: y");
        let c = TraceContext::from_column(Some(&smuggled)).unwrap();
        assert_eq!(
            (c.traceparent.as_str(), c.tracestate.as_deref()),
            (TP, None)
        );
        // An oversized tracestate is dropped, the traceparent kept.
        let big = "k=".to_string() + &"v".repeat(MAX_TRACESTATE);
        let c = TraceContext::from_pairs(Some(TP), Some(&big)).unwrap();
        assert_eq!(c.tracestate, None);
    }

    #[test]
    fn without_an_opentelemetry_layer_spans_carry_no_context() {
        let span = tracing::info_span!("untraced");
        assert_eq!(TraceContext::of(&span), None);
        assert_eq!(TraceContext::current(), None);
    }
}
