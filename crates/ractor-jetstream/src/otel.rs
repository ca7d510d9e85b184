//! Trace context across NATS (the `otel` feature): a trace runs from the
//! publisher, through the consumer child, to whatever the target does.
//!
//! - **Consuming.** A message with a W3C `traceparent` header (and
//!   `tracestate`, if any) gets a delivery span whose OpenTelemetry parent
//!   is that context. A target that works inside the delivery's span
//!   ([`Delivery::span`](crate::Delivery::span), for example with
//!   `tracing::info_span!(parent: delivery.span(), "charge")`) makes its
//!   spans children of it.
//! - **Publishing.** [`inject_current`] writes the current span's context
//!   into a message's headers, so the consumer's delivery span continues
//!   the publisher's trace.
//!
//! Spans reach OpenTelemetry through the application's
//! `tracing_opentelemetry` layer; without one, nothing is recorded and
//! the headers are only read.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes the current span's trace context (`traceparent`, `tracestate`)
/// into `headers`, for a message about to be published.
pub fn inject_current(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut Headers(headers));
}

/// Makes the trace context in `headers`, if any, the parent of `span`.
pub(crate) fn continue_trace(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else {
        return;
    };
    if headers.get("traceparent").is_none() {
        return;
    }
    let context = TraceContextPropagator::new().extract(&ReadHeaders(headers));
    // Fails only when the span is disabled or already has a parent set.
    let _ = span.set_parent(context);
}

struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct ReadHeaders<'a>(&'a HeaderMap);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}
