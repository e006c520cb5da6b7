//! Conversions between the contract's types and the engine's: messages, configurations,
//! times and errors. The engine speaks milliseconds since the Unix epoch and plain strings;
//! the contract speaks `SystemTime`, validated names and `Duration`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::{
    Error, Filter, Message, MessageId, MessageParts, StartPosition, SubscriptionConfig,
    TopicConfig, TopicName,
};
use sluice_engine::catalog::{Start, SubscriptionOptions, TopicOptions};
use sluice_engine::record::MessageRecord;

/// Milliseconds since the Unix epoch (0 for `None` or a time before the epoch).
pub(crate) fn to_ms(at: Option<SystemTime>) -> u64 {
    at.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` after the epoch (`None` for 0).
pub(crate) fn from_ms(ms: u64) -> Option<SystemTime> {
    (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A message as the engine stores it (the engine stamps the offset and `published_at`).
pub(crate) fn to_record(message: &Message) -> MessageRecord {
    MessageRecord {
        offset: 0,
        published_at_ms: to_ms(message.published_at()),
        deliver_at_ms: to_ms(message.deliver_at()),
        id: message.id().as_str().to_owned(),
        message_type: message.message_type().map(str::to_owned),
        routing_key: message.routing_key().map(str::to_owned),
        ordering_key: message.ordering_key().map(str::to_owned),
        content_type: message.content_type().map(str::to_owned),
        headers: message
            .headers()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        payload: message.payload().clone(),
    }
}

/// A message from what the engine stored.
pub(crate) fn from_record(record: MessageRecord) -> Message {
    let mut parts = MessageParts::default();
    parts.id = MessageId::new(record.id).ok();
    parts.message_type = record.message_type;
    parts.routing_key = record.routing_key;
    parts.ordering_key = record.ordering_key;
    parts.content_type = record.content_type;
    parts.headers = record.headers.into_iter().collect();
    parts.payload = record.payload;
    parts.published_at = from_ms(record.published_at_ms);
    parts.deliver_at = from_ms(record.deliver_at_ms);
    Message::from_parts(parts)
}

/// Topic options from a topic configuration.
pub(crate) fn topic_options(config: &TopicConfig) -> TopicOptions {
    TopicOptions::default().dedup_window_ms(config.dedup_window.map(duration_ms))
}

/// The topic configuration the engine's options describe.
pub(crate) fn topic_config(options: &TopicOptions) -> TopicConfig {
    let mut config = TopicConfig::default();
    if let Some(ms) = options.dedup_window_ms {
        config = config.dedup_window(Duration::from_millis(ms));
    }
    config
}

/// Subscription options from a subscription configuration.
pub(crate) fn subscription_options(config: &SubscriptionConfig) -> SubscriptionOptions {
    let mut options = SubscriptionOptions::new(config.topic.as_str());
    options.filter = config.filter.as_ref().map(|f| f.as_str().to_owned());
    options.start = match config.start {
        StartPosition::Latest => Start::Latest,
        StartPosition::Earliest => Start::Earliest,
        StartPosition::At(at) => Start::At(to_ms(Some(at))),
    };
    options.lease_ms = duration_ms(config.lease).max(1);
    options.max_attempts = config.max_attempts;
    options.dead_letter_queue = config.dead_letter_queue;
    options.prefetch = config.prefetch;
    options
}

/// The subscription configuration the engine's options describe.
pub(crate) fn subscription_config(
    options: &SubscriptionOptions,
) -> Result<SubscriptionConfig, Error> {
    let mut config = SubscriptionConfig::new(TopicName::new(options.topic.clone())?)
        .lease(Duration::from_millis(options.lease_ms))
        .max_attempts(options.max_attempts)
        .dead_letter_queue(options.dead_letter_queue)
        .prefetch(options.prefetch)
        .start(match options.start {
            Start::Latest => StartPosition::Latest,
            Start::Earliest => StartPosition::Earliest,
            Start::At(ms) => StartPosition::At(UNIX_EPOCH + Duration::from_millis(ms)),
        });
    if let Some(pattern) = &options.filter {
        config = config.filter(Filter::new(pattern.clone())?);
    }
    Ok(config)
}

/// A contract error for an engine error.
pub(crate) fn error(err: sluice_engine::Error) -> Error {
    use sluice_engine::Error as E;
    match err {
        E::TopicNotFound { name } => Error::topic_not_found(name),
        E::SubscriptionNotFound { name } => Error::subscription_not_found(name),
        E::LeaseLost { id } => Error::LeaseLost { id },
        E::Closed => Error::Closed("the embedded engine is closed"),
        // The engine's messages are complete (they carry their own causes): no source, so
        // error reports do not print the same text twice.
        other => Error::backend(other.to_string(), other.is_retryable()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_trip_through_a_record() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut message = Message::builder("payload")
            .id("order-1")
            .message_type("order.placed")
            .routing_key("eu.orders")
            .ordering_key("customer-9")
            .content_type("text/plain")
            .header("tenant", "acme")
            .deliver_at(at)
            .build()
            .unwrap();
        message.set_published_at(at);
        message.set_reserved_header("sluice-dlq-reason", "because");
        assert_eq!(from_record(to_record(&message)), message);
    }

    #[test]
    fn configurations_survive_the_trip_through_options() {
        let topic = TopicName::new("orders").unwrap();
        let config = SubscriptionConfig::new(topic)
            .filter(Filter::new("eu.#").unwrap())
            .lease(Duration::from_secs(7))
            .max_attempts(9)
            .dead_letter_queue(false)
            .prefetch(3)
            .start(StartPosition::Earliest);
        let back = subscription_config(&subscription_options(&config)).unwrap();
        assert_eq!(back.difference(&config), None);
        assert_eq!(back.start, StartPosition::Earliest);
        let topic = TopicConfig::default().dedup_window(Duration::from_secs(600));
        assert_eq!(topic_config(&topic_options(&topic)), topic);
    }
}
