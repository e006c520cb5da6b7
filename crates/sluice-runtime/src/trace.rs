//! Tracing: a span per publish and per delivery, and W3C trace context (`traceparent`,
//! `tracestate`) carried in message headers so one trace spans producer and consumer.
//!
//! The spans are plain `tracing` spans; with a `tracing-opentelemetry` layer installed they
//! become OpenTelemetry spans, the producer's context is injected into the message headers
//! at publish ([`inject`]) and the delivery span continues it ([`delivery_span`]). Without
//! such a layer nothing is injected and the spans are ordinary log context. Headers are
//! plain strings on every backend, so the context crosses RabbitMQ, SQS and Kafka alike.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use sluice_core::{Delivery, Message, TopicName};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header carrying the trace and parent span ids.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor trace state.
pub const TRACESTATE: &str = "tracestate";

struct HeaderInjector<'a>(&'a mut Message);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set_reserved_header(key, value);
    }
}

struct HeaderExtractor<'a>(&'a Message);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.header(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.headers().keys().map(String::as_str).collect()
    }
}

/// The span of one publish.
pub fn publish_span(topic: &TopicName, message: &Message) -> Span {
    tracing::info_span!(
        "sluice.publish",
        otel.name = %format_args!("{topic} publish"),
        otel.kind = "producer",
        messaging.system = "sluice",
        topic = %topic,
        message_id = %message.id(),
        message_type = message.message_type().unwrap_or(""),
    )
}

/// Writes the context of `span` into the message's `traceparent` / `tracestate` headers, if
/// `span` belongs to a valid OpenTelemetry trace.
pub fn inject(span: &Span, message: &mut Message) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(message));
}

/// The span of one delivery, continuing the producer's trace when the message carries one.
pub fn delivery_span<D: Delivery>(delivery: &D) -> Span {
    let message = delivery.message();
    let span = tracing::info_span!(
        "sluice.process",
        otel.name = %format_args!("{} process", delivery.subscription()),
        otel.kind = "consumer",
        messaging.system = "sluice",
        topic = %delivery.topic(),
        subscription = %delivery.subscription(),
        message_id = %message.id(),
        message_type = message.message_type().unwrap_or(""),
        attempt = delivery.attempt(),
    );
    if message.header(TRACEPARENT).is_some() {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(message));
        // Fails only when no OpenTelemetry layer is installed: then there is no trace to join.
        let _ = span.set_parent(parent);
    }
    span
}
