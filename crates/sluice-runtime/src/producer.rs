//! The producer side of the runtime: a [`Publisher`] wrapper that gives every publish a span,
//! injects the W3C trace context into the message headers and counts it in the metrics, plus
//! typed helpers for events.

use std::time::{Duration, SystemTime};

use sluice_core::{PublishOutcome, PublishReceipt, Publisher, TopicName};
use tracing::Instrument;

use crate::events::{event_message, Event};
use crate::metrics;
use crate::trace;

/// A failure to produce a typed message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The value could not be encoded as JSON.
    #[error("cannot encode {type_name} as JSON: {source}")]
    Encode {
        /// The Rust type.
        type_name: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The message is invalid or the publish failed.
    #[error(transparent)]
    Sluice(#[from] sluice_core::Error),
}

impl From<sluice_core::MessageError> for ProduceError {
    fn from(err: sluice_core::MessageError) -> Self {
        ProduceError::Sluice(err.into())
    }
}

impl ProduceError {
    /// Whether publishing again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProduceError::Sluice(err) if err.is_retryable())
    }
}

/// Wraps a publisher with tracing (a `sluice.publish` span, `traceparent` / `tracestate`
/// injected into the headers) and metrics (`sluice_published_total`,
/// `sluice_publish_errors_total`). It is itself a [`Publisher`].
#[derive(Debug, Clone)]
pub struct Producer<P> {
    inner: P,
}

impl<P: Publisher> Producer<P> {
    /// Wraps `publisher`.
    pub fn new(publisher: P) -> Self {
        Self { inner: publisher }
    }

    /// The wrapped publisher.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Publishes a typed event (JSON, `type` = `E::TYPE`).
    pub async fn publish_event<E: Event>(
        &self,
        topic: &TopicName,
        event: &E,
    ) -> Result<PublishReceipt, ProduceError> {
        self.publish_event_with(topic, event, |m| m).await
    }

    /// Publishes a typed event, letting `customize` set the id, keys, headers or delay.
    pub async fn publish_event_with<E: Event>(
        &self,
        topic: &TopicName,
        event: &E,
        customize: impl FnOnce(sluice_core::MessageBuilder) -> sluice_core::MessageBuilder,
    ) -> Result<PublishReceipt, ProduceError> {
        let builder = event_message(event).map_err(|source| ProduceError::Encode {
            type_name: std::any::type_name::<E>(),
            source,
        })?;
        let message = customize(builder).build()?;
        Ok(self.publish(topic, message).await?)
    }

    /// Publishes a typed event that becomes deliverable after `delay`.
    pub async fn publish_event_in<E: Event>(
        &self,
        topic: &TopicName,
        delay: Duration,
        event: &E,
    ) -> Result<PublishReceipt, ProduceError> {
        self.publish_event_with(topic, event, |m| m.deliver_after(delay))
            .await
    }

    /// Publishes a typed event that becomes deliverable at `at`.
    pub async fn publish_event_at<E: Event>(
        &self,
        topic: &TopicName,
        at: SystemTime,
        event: &E,
    ) -> Result<PublishReceipt, ProduceError> {
        self.publish_event_with(topic, event, |m| m.deliver_at(at))
            .await
    }
}

fn record(topic: &TopicName, message_type: &str, result: &sluice_core::Result<PublishReceipt>) {
    match result {
        Ok(receipt) => metrics::published(
            topic.as_str(),
            message_type,
            receipt.outcome == PublishOutcome::Duplicate,
        ),
        Err(_) => metrics::publish_error(topic.as_str(), message_type),
    }
}

impl<P: Publisher> Publisher for Producer<P> {
    async fn publish(
        &self,
        topic: &TopicName,
        mut message: sluice_core::Message,
    ) -> sluice_core::Result<PublishReceipt> {
        let span = trace::publish_span(topic, &message);
        trace::inject(&span, &mut message);
        let message_type = message.message_type().unwrap_or_default().to_owned();
        let result = self.inner.publish(topic, message).instrument(span).await;
        record(topic, &message_type, &result);
        result
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        mut messages: Vec<sluice_core::Message>,
    ) -> Vec<sluice_core::Result<PublishReceipt>> {
        let span = tracing::info_span!("sluice.publish_batch", otel.kind = "producer", topic = %topic, messages = messages.len());
        let types: Vec<String> = messages
            .iter_mut()
            .map(|m| {
                trace::inject(&span, m);
                m.message_type().unwrap_or_default().to_owned()
            })
            .collect();
        let results = self
            .inner
            .publish_batch(topic, messages)
            .instrument(span)
            .await;
        for (message_type, result) in types.iter().zip(&results) {
            record(topic, message_type, result);
        }
        results
    }

    async fn close(&self) -> sluice_core::Result<()> {
        self.inner.close().await
    }
}
