//! Conversions between the wire shapes and `sluice-core`'s types. Names arriving from the
//! wire are validated again (`TopicName::new`…): a peer is never trusted to have done it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::{
    BacklogBound, Error, Filter, Message, MessageError, MessageId, MessageParts, ObjectKind,
    Overflow, StartPosition, SubscriptionConfig, SubscriptionName, SubscriptionStats, TopicConfig,
    TopicInfo, TopicName,
};

use crate::message::{
    WireBacklogBound, WireError, WireKind, WireMessage, WireStart, WireStats,
    WireSubscriptionConfig, WireTopicConfig, WireTopicInfo,
};

/// Milliseconds of a duration, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Nanoseconds since the Unix epoch (0 before it, saturating after 2554).
pub fn ns(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The instant `ns` nanoseconds after the Unix epoch.
pub fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// A topic name from the wire, validated.
pub fn topic(name: &str) -> Result<TopicName, Error> {
    Ok(TopicName::new(name)?)
}

/// A subscription name from the wire, validated.
pub fn subscription(name: &str) -> Result<SubscriptionName, Error> {
    Ok(SubscriptionName::new(name)?)
}

/// A message onto the wire.
pub fn message_to_wire(message: Message) -> WireMessage {
    let parts = message.into_parts();
    WireMessage {
        id: parts
            .id
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        message_type: parts.message_type,
        routing_key: parts.routing_key,
        ordering_key: parts.ordering_key,
        headers: parts.headers.into_iter().collect(),
        content_type: parts.content_type,
        payload: parts.payload.to_vec(),
        published_at_ns: parts.published_at.map(ns),
        deliver_at_ns: parts.deliver_at.map(ns),
    }
}

/// A message off the wire (the id is validated; reserved headers are kept).
pub fn message_from_wire(wire: WireMessage) -> Result<Message, Error> {
    let mut parts = MessageParts::default();
    parts.id = Some(MessageId::new(wire.id)?);
    parts.message_type = wire.message_type;
    parts.routing_key = wire.routing_key;
    parts.ordering_key = wire.ordering_key;
    parts.headers = wire.headers.into_iter().collect();
    parts.content_type = wire.content_type;
    parts.payload = wire.payload.into();
    parts.published_at = wire.published_at_ns.map(time);
    parts.deliver_at = wire.deliver_at_ns.map(time);
    Ok(Message::from_parts(parts))
}

/// A topic configuration onto the wire.
pub fn topic_config_to_wire(config: &TopicConfig) -> WireTopicConfig {
    WireTopicConfig {
        dedup_window_ms: config.dedup_window.map(ms),
        backlog_bound: config.backlog_bound.map(|b| WireBacklogBound {
            max_messages: b.max_messages,
            max_bytes: b.max_bytes,
            block_ms: match b.overflow {
                Overflow::Block { timeout } => Some(ms(timeout)),
                _ => None,
            },
        }),
        ordered: config.ordered,
    }
}

/// A topic configuration off the wire.
pub fn topic_config_from_wire(wire: &WireTopicConfig) -> TopicConfig {
    let mut config = TopicConfig::default().ordered(wire.ordered);
    if let Some(window) = wire.dedup_window_ms {
        config = config.dedup_window(Duration::from_millis(window));
    }
    if let Some(b) = &wire.backlog_bound {
        let overflow = match b.block_ms {
            Some(ms) => Overflow::Block {
                timeout: Duration::from_millis(ms),
            },
            None => Overflow::Reject,
        };
        let mut bound = BacklogBound::new(overflow);
        bound.max_messages = b.max_messages;
        bound.max_bytes = b.max_bytes;
        config = config.backlog_bound(bound);
    }
    config
}

/// A subscription configuration onto the wire.
pub fn subscription_config_to_wire(config: &SubscriptionConfig) -> WireSubscriptionConfig {
    WireSubscriptionConfig {
        topic: config.topic.as_str().to_owned(),
        filter: config.filter.as_ref().map(|f| f.as_str().to_owned()),
        start: match config.start {
            StartPosition::Latest => WireStart::Latest,
            StartPosition::Earliest => WireStart::Earliest,
            StartPosition::At(at) => WireStart::At(ns(at)),
        },
        lease_ms: ms(config.lease),
        max_attempts: config.max_attempts,
        dead_letter_queue: config.dead_letter_queue,
        prefetch: config.prefetch,
    }
}

/// A subscription configuration off the wire (topic and filter validated).
pub fn subscription_config_from_wire(
    wire: &WireSubscriptionConfig,
) -> Result<SubscriptionConfig, Error> {
    let mut config = SubscriptionConfig::new(topic(&wire.topic)?)
        .start(match wire.start {
            WireStart::Latest => StartPosition::Latest,
            WireStart::Earliest => StartPosition::Earliest,
            WireStart::At(at) => StartPosition::At(time(at)),
        })
        .lease(Duration::from_millis(wire.lease_ms))
        .max_attempts(wire.max_attempts)
        .dead_letter_queue(wire.dead_letter_queue)
        .prefetch(wire.prefetch);
    if let Some(pattern) = &wire.filter {
        config = config.filter(Filter::new(pattern.clone())?);
    }
    Ok(config)
}

/// Topic information onto the wire.
pub fn topic_info_to_wire(info: &TopicInfo) -> WireTopicInfo {
    WireTopicInfo {
        name: info.name.as_str().to_owned(),
        config: topic_config_to_wire(&info.config),
        subscriptions: info
            .subscriptions
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
    }
}

/// Topic information off the wire.
pub fn topic_info_from_wire(wire: &WireTopicInfo) -> Result<TopicInfo, Error> {
    Ok(TopicInfo::new(
        topic(&wire.name)?,
        topic_config_from_wire(&wire.config),
        wire.subscriptions
            .iter()
            .map(|s| subscription(s))
            .collect::<Result<_, _>>()?,
    ))
}

/// Stats onto the wire.
pub fn stats_to_wire(stats: &SubscriptionStats) -> WireStats {
    WireStats {
        ready: stats.ready,
        in_flight: stats.in_flight,
        delayed: stats.delayed,
        dead_lettered: stats.dead_lettered,
        oldest_age_ms: stats.oldest_age.map(ms),
    }
}

/// Stats off the wire.
pub fn stats_from_wire(wire: &WireStats) -> SubscriptionStats {
    let mut stats = SubscriptionStats::default();
    stats.ready = wire.ready;
    stats.in_flight = wire.in_flight;
    stats.delayed = wire.delayed;
    stats.dead_lettered = wire.dead_lettered;
    stats.oldest_age = wire.oldest_age_ms.map(Duration::from_millis);
    stats
}

fn kind_to_wire(kind: ObjectKind) -> WireKind {
    match kind {
        ObjectKind::Topic => WireKind::Topic,
        ObjectKind::Subscription => WireKind::Subscription,
        _ => WireKind::Message,
    }
}

fn kind_from_wire(kind: WireKind) -> ObjectKind {
    match kind {
        WireKind::Topic => ObjectKind::Topic,
        WireKind::Subscription => ObjectKind::Subscription,
        WireKind::Message => ObjectKind::Message,
    }
}

/// A contract error onto the wire.
pub fn error_to_wire(error: &Error) -> WireError {
    match error {
        Error::NotFound { kind, name } => WireError::NotFound {
            kind: kind_to_wire(*kind),
            name: name.clone(),
        },
        Error::Conflict {
            kind,
            name,
            difference,
        } => WireError::Conflict {
            kind: kind_to_wire(*kind),
            name: name.clone(),
            difference: difference.clone(),
        },
        Error::LeaseLost { id } => WireError::LeaseLost { id: id.clone() },
        Error::BacklogFull { topic, detail } => WireError::BacklogFull {
            topic: topic.clone(),
            detail: detail.clone(),
        },
        Error::Message(MessageError::TooLarge { id, size, max }) => WireError::TooLarge {
            id: id.clone(),
            size: *size as u64,
            max: *max as u64,
        },
        Error::Message(MessageError::DelayTooLong { requested, max }) => WireError::DelayTooLong {
            requested_ms: ms(*requested),
            max_ms: ms(*max),
        },
        Error::Name(_) | Error::Message(_) | Error::Url(_) | Error::InvalidFilter { .. } => {
            WireError::Invalid {
                message: error.to_string(),
            }
        }
        Error::Unsupported(message) => WireError::Unsupported {
            message: message.clone(),
        },
        Error::Forbidden(message) => WireError::Forbidden {
            message: message.clone(),
        },
        Error::Closed(what) => WireError::Closed {
            what: (*what).to_owned(),
        },
        Error::Timeout(after) => WireError::Timeout {
            after_ms: ms(*after),
        },
        other => WireError::Backend {
            message: other.to_string(),
            retryable: other.is_retryable(),
        },
    }
}

/// Another error of the same kind, message and retryability (`Error` is not `Clone`): for
/// one failure reported once per message of a batch.
pub fn error_copy(error: &Error) -> Error {
    error_from_wire(error_to_wire(error))
}

/// A wire error as the contract's error.
pub fn error_from_wire(wire: WireError) -> Error {
    match wire {
        WireError::NotFound { kind, name } => Error::NotFound {
            kind: kind_from_wire(kind),
            name,
        },
        WireError::Conflict {
            kind,
            name,
            difference,
        } => Error::Conflict {
            kind: kind_from_wire(kind),
            name,
            difference,
        },
        WireError::LeaseLost { id } => Error::LeaseLost { id },
        WireError::BacklogFull { topic, detail } => Error::BacklogFull { topic, detail },
        WireError::TooLarge { id, size, max } => MessageError::TooLarge {
            id,
            size: size as usize,
            max: max as usize,
        }
        .into(),
        WireError::DelayTooLong {
            requested_ms,
            max_ms,
        } => MessageError::DelayTooLong {
            requested: Duration::from_millis(requested_ms),
            max: Duration::from_millis(max_ms),
        }
        .into(),
        WireError::Invalid { message } => Error::backend(message, false),
        WireError::Unsupported { message } => Error::Unsupported(message),
        WireError::Closed { what } => Error::Closed(match what.as_str() {
            "publisher" => "publisher",
            "subscriber" => "subscriber",
            "backend" => "backend",
            _ => "the server's handle",
        }),
        WireError::Timeout { after_ms } => Error::Timeout(Duration::from_millis(after_ms)),
        WireError::Unauthorized { message } => Error::connection(
            format!("the server refused the connection: {message}"),
            None,
        ),
        WireError::Backend { message, retryable } => Error::backend(message, retryable),
        WireError::UnknownHandle { message } => Error::backend(message, false),
        WireError::Forbidden { message } => Error::Forbidden(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_every_field_round_trips() {
        let message = Message::builder(&b"payload"[..])
            .id("m-1")
            .message_type("order.placed")
            .routing_key("eu.orders")
            .ordering_key("customer-7")
            .header("tenant", "acme")
            .content_type("application/json")
            .deliver_at(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
            .build()
            .unwrap();
        let back = message_from_wire(message_to_wire(message.clone())).unwrap();
        assert_eq!(back, message);
    }

    #[test]
    fn configurations_round_trip() {
        let topic_config = TopicConfig::default()
            .dedup_window(Duration::from_secs(60))
            .backlog_bound(
                BacklogBound::new(Overflow::Block {
                    timeout: Duration::from_millis(250),
                })
                .max_messages(10),
            );
        assert_eq!(
            topic_config_from_wire(&topic_config_to_wire(&topic_config)),
            topic_config
        );
        let sub = SubscriptionConfig::new(TopicName::new("orders").unwrap())
            .filter(Filter::new("eu.*").unwrap())
            .start(StartPosition::Earliest)
            .lease(Duration::from_millis(1500))
            .max_attempts(3)
            .dead_letter_queue(false)
            .prefetch(7);
        assert_eq!(
            subscription_config_from_wire(&subscription_config_to_wire(&sub)).unwrap(),
            sub
        );
    }

    #[test]
    fn errors_come_back_as_the_same_kind() {
        let err = error_from_wire(error_to_wire(&Error::topic_not_found("orders")));
        assert!(
            matches!(&err, Error::NotFound { kind: ObjectKind::Topic, name } if name == "orders"),
            "{err}"
        );
        let err = error_from_wire(error_to_wire(&Error::backlog_full("t", "1 message")));
        assert!(err.is_retryable(), "backlog full stays retryable: {err}");
        let invalid = Error::from(TopicName::new("Bad Name").unwrap_err());
        let err = error_from_wire(error_to_wire(&invalid));
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("Bad Name"), "{err}");
    }
}
