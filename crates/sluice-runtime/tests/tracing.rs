//! Tracing: W3C trace context from producer to consumer.
//!
//! Alone in its test binary: `tracing` caches per-callsite interest process-wide, and a test
//! thread without a subscriber running at the same time can make the thread-local one here
//! miss spans.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, wait_until, Running};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use sluice_core::{Backend, Message, Publisher};
use sluice_runtime::{raw_handler, Context, Producer, Worker};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// What the consumer saw: its span's trace id and the message's `traceparent`.
type Seen = (TraceId, Option<String>);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn trace_context_arrives_at_the_consumer_with_the_producers_trace_id() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("sluice-test")));
    // Thread-local, and the current-thread runtime polls every task on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = setup(|c| c).await;
    let producer = Producer::new(s.backend.publisher().await.unwrap());
    let checkout = tracing::info_span!("checkout");
    let producer_trace = checkout.context().span().span_context().trace_id();
    assert_ne!(
        producer_trace,
        TraceId::INVALID,
        "the test's tracer records spans"
    );
    producer
        .publish(
            &s.topic,
            Message::builder("x").id("traced").build().unwrap(),
        )
        .instrument(checkout)
        .await
        .unwrap();

    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let record = seen.clone();
    let worker = Worker::builder(
        s.backend.subscribe(&s.subscription).await.unwrap(),
        raw_handler(move |_p, ctx: Context| {
            let trace = tracing::Span::current()
                .context()
                .span()
                .span_context()
                .trace_id();
            *record.lock().unwrap() = Some((
                trace,
                ctx.message().header("traceparent").map(str::to_owned),
            ));
            async { Ok(()) }
        }),
    )
    .build();
    let running = Running::start(worker);
    wait_until("handled", Duration::from_secs(5), || {
        seen.lock().unwrap().is_some()
    })
    .await;
    running.stop().await;
    let (consumer_trace, traceparent) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        consumer_trace, producer_trace,
        "the delivery span continues the producer's trace"
    );
    let traceparent = traceparent.expect("traceparent header on the message");
    assert!(
        traceparent.starts_with(&format!("00-{producer_trace}-")),
        "W3C traceparent: {traceparent}"
    );
}
