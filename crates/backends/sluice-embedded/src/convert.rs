//! Conversions between the contract's types and the engine's: messages, configurations,
//! times and errors. The engine speaks milliseconds since the Unix epoch and plain strings;
//! the contract speaks `SystemTime`, validated names and `Duration`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::{
    BacklogBound, Error, Filter, Message, MessageId, MessageParts, Overflow, StartPosition,
    SubscriptionConfig, TopicConfig, TopicName,
};
use sluice_engine::catalog::{self, Start, SubscriptionOptions, TopicOptions};
use sluice_engine::error::BacklogUnit;
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

/// Topic options from a topic configuration. Fails with `Unsupported` for an overflow
/// policy this adapter does not know (the contract's `Overflow` may grow).
pub(crate) fn topic_options(config: &TopicConfig) -> Result<TopicOptions, Error> {
    let backlog = config.backlog_bound.map(backlog_bound).transpose()?;
    Ok(TopicOptions::default()
        .dedup_window_ms(config.dedup_window.map(duration_ms))
        .backlog(backlog)
        .ordered(config.ordered))
}

/// The engine's backlog bound for the contract's (timeouts in whole milliseconds).
fn backlog_bound(bound: BacklogBound) -> Result<catalog::BacklogBound, Error> {
    let overflow = match bound.overflow {
        Overflow::Block { timeout } => catalog::Overflow::Block {
            timeout_ms: duration_ms(timeout),
        },
        Overflow::Reject => catalog::Overflow::Reject,
        other => {
            return Err(Error::Unsupported(format!(
                "backlog overflow policy {other:?} on the embedded backend"
            )))
        }
    };
    Ok(catalog::BacklogBound {
        max_messages: bound.max_messages,
        max_bytes: bound.max_bytes,
        overflow,
    })
}

/// The topic configuration the engine's options describe (retention, an engine-only
/// option, is not part of it).
pub(crate) fn topic_config(options: &TopicOptions) -> TopicConfig {
    let mut config = TopicConfig::default().ordered(options.ordered);
    if let Some(ms) = options.dedup_window_ms {
        config = config.dedup_window(Duration::from_millis(ms));
    }
    if let Some(bound) = options.backlog {
        let overflow = match bound.overflow {
            catalog::Overflow::Block { timeout_ms } => Overflow::Block {
                timeout: Duration::from_millis(timeout_ms),
            },
            catalog::Overflow::Reject => Overflow::Reject,
        };
        let mut backlog = BacklogBound::new(overflow);
        backlog.max_messages = bound.max_messages;
        backlog.max_bytes = bound.max_bytes;
        config = config.backlog_bound(backlog);
    }
    config
}

/// A contract `BacklogFull` from the engine's report: `topic` and `slowest` as the caller
/// names them (logical names where it knows the naming), and, for a publish that waited
/// under `block`, how long it waited.
pub(crate) fn backlog_full(
    topic: &str,
    backlog: u64,
    bound: u64,
    unit: BacklogUnit,
    slowest: &str,
    waited: Option<Duration>,
) -> Error {
    let mut detail = format!(
        "its backlog of {backlog} {unit} plus this publish would exceed the bound of {bound} \
         {unit}; the slowest subscription is `{slowest}`"
    );
    if let Some(waited) = waited {
        detail.push_str(&format!("; no room was made within {waited:?}"));
    }
    Error::backlog_full(topic, detail)
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
        // Physical names here: the publisher, which knows the naming, reports logical ones.
        E::BacklogFull {
            topic,
            backlog,
            bound,
            unit,
            slowest,
            ..
        } => backlog_full(&topic, backlog, bound, unit, &slowest, None),
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
        assert_eq!(topic_config(&topic_options(&topic).unwrap()), topic);
        for overflow in [
            Overflow::Reject,
            Overflow::Block {
                timeout: Duration::from_millis(1500),
            },
        ] {
            let topic = TopicConfig::default()
                .backlog_bound(BacklogBound::new(overflow).max_messages(10).max_bytes(4096));
            let back = topic_config(&topic_options(&topic).unwrap());
            assert_eq!(back, topic);
            assert_eq!(back.difference(&topic), None);
        }
    }

    #[test]
    fn a_full_backlog_is_backlog_full_naming_the_topic_and_the_slowest_subscription() {
        let err = error(sluice_engine::Error::BacklogFull {
            topic: "orders".into(),
            backlog: 3,
            bound: 3,
            unit: BacklogUnit::Messages,
            slowest: "billing".into(),
            block_timeout_ms: None,
        });
        assert!(err.is_retryable());
        match &err {
            Error::BacklogFull { topic, detail } => {
                assert_eq!(topic, "orders");
                assert!(
                    detail.contains("bound of 3 messages")
                        && detail.contains("the slowest subscription is `billing`"),
                    "{detail}"
                );
            }
            other => panic!("expected BacklogFull, got {other:?}"),
        }
    }
}
