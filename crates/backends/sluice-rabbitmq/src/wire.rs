//! The wire mapping between a Sluice [`Message`] and an AMQP message (see
//! `docs/rabbitmq.md`, which a plain AMQP client can follow to interoperate).
//!
//! Invariant: decoding an encoded message gives back every field a publisher set (id, type,
//! keys, headers, content type, payload, published_at); the transport headers Sluice adds
//! (`sluice-attempt`, `sluice-routing-key`, …) and RabbitMQ's dead-lettering headers
//! (`x-death`, …) never reach the user's headers.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use sluice_core::envelope::format_time;
use sluice_core::{Error, Message, MessageId, MessageParts};

/// Header: the attempt of the next delivery of this physical message (set when Sluice
/// republishes for a retry; absent means 1).
pub const ATTEMPT: &str = "sluice-attempt";
/// Header: the routing key (kept when a message travels through a tier or the DLQ, where
/// the AMQP routing key is the queue's name).
pub const ROUTING_KEY: &str = "sluice-routing-key";
/// Header: the ordering key.
pub const ORDERING_KEY: &str = "sluice-ordering-key";
/// Header: when it was published (RFC 3339 with milliseconds; the AMQP `timestamp`
/// property holds the same time in whole seconds).
pub const PUBLISHED_AT: &str = "sluice-published-at";
/// Header: the message id, when it is longer than AMQP's 255-byte `message_id`.
pub const LONG_ID: &str = "sluice-id";
/// Header: the delay tier a delayed publish waits in (routes it to the tier's queue).
pub const DELAY_TIER: &str = "sluice-delay";
/// Header RabbitMQ sets on a quorum queue's redeliveries.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers that describe transport, not the message: dropped when decoding.
fn is_transport_header(name: &str) -> bool {
    matches!(
        name,
        ATTEMPT | ROUTING_KEY | ORDERING_KEY | PUBLISHED_AT | LONG_ID | DELAY_TIER | DELIVERY_COUNT
    ) || name.starts_with("x-death")
        || name.starts_with("x-first-death")
        || name.starts_with("x-last-death")
}

fn short(field: &str, value: &str) -> Result<ShortString, Error> {
    if value.len() > 255 {
        return Err(Error::Unsupported(format!(
            "{field} longer than 255 bytes does not fit an AMQP short string"
        )));
    }
    Ok(ShortString::from(value.to_owned()))
}

/// An AMQP message ready to publish: routing key, properties, body.
pub(crate) struct Outgoing {
    pub(crate) routing_key: String,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Bytes,
}

/// Encodes `message`, adding the transport headers in `extra`.
pub(crate) fn encode(message: &Message, extra: &[(&str, String)]) -> Result<Outgoing, Error> {
    let mut headers = FieldTable::default();
    for (name, value) in message.headers() {
        headers.insert(name.clone().into(), long_string(value));
    }
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    let id = message.id().as_str();
    if id.len() <= 255 {
        properties = properties.with_message_id(ShortString::from(id.to_owned()));
    } else {
        headers.insert(LONG_ID.into(), long_string(id));
    }
    if let Some(content_type) = message.content_type() {
        properties = properties.with_content_type(short("content type", content_type)?);
    }
    if let Some(kind) = message.message_type() {
        properties = properties.with_type(short("message type", kind)?);
    }
    if let Some(key) = message.routing_key() {
        headers.insert(ROUTING_KEY.into(), long_string(key));
    }
    if let Some(key) = message.ordering_key() {
        headers.insert(ORDERING_KEY.into(), long_string(key));
    }
    if let Some(at) = message.published_at() {
        let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        properties = properties.with_timestamp(seconds);
        headers.insert(PUBLISHED_AT.into(), long_string(&format_time(at)));
    }
    for (name, value) in extra {
        headers.insert((*name).into(), long_string(value));
    }
    Ok(Outgoing {
        routing_key: message.routing_key().unwrap_or_default().to_owned(),
        properties: properties.with_headers(headers),
        body: message.payload().clone(),
    })
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.as_bytes().to_vec().into())
}

/// A header value as text (other clients may send numbers or booleans).
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        _ => return None,
    })
}

fn integer(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// A received AMQP message as a Sluice message, with its attempt.
pub(crate) struct Decoded {
    pub(crate) message: Message,
    /// `sluice-attempt` (1 if absent) plus `x-delivery-count` (0 if absent).
    pub(crate) attempt: u32,
}

/// Decodes a received message. A message without `message_id` (a plain client that set
/// none) gets a fresh id.
pub(crate) fn decode(routing_key: &str, properties: &BasicProperties, body: Bytes) -> Decoded {
    let mut parts = MessageParts::default();
    let mut base_attempt = 1u64;
    let mut delivery_count = 0u64;
    let mut routing = None;
    let mut long_id = None;
    let mut published_at = None;
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let name = name.as_str();
            match name {
                ATTEMPT => base_attempt = integer(value).unwrap_or(1).max(1),
                DELIVERY_COUNT => delivery_count = integer(value).unwrap_or(0),
                ROUTING_KEY => routing = text(value),
                ORDERING_KEY => parts.ordering_key = text(value),
                LONG_ID => long_id = text(value),
                PUBLISHED_AT => {
                    published_at = text(value).and_then(|v| humantime::parse_rfc3339(&v).ok())
                }
                _ if is_transport_header(name) => {}
                _ => {
                    if let Some(value) = text(value) {
                        parts.headers.insert(name.to_owned(), value);
                    }
                }
            }
        }
    }
    let id = long_id.or_else(|| properties.message_id().as_ref().map(|s| s.to_string()));
    parts.id = id.and_then(|id| MessageId::new(id).ok());
    parts.message_type = properties.kind().as_ref().map(|s| s.to_string());
    parts.content_type = properties.content_type().as_ref().map(|s| s.to_string());
    parts.routing_key =
        routing.or_else(|| (!routing_key.is_empty()).then(|| routing_key.to_owned()));
    parts.published_at = published_at.or_else(|| {
        properties
            .timestamp()
            .map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds))
    });
    parts.payload = body;
    let attempt = base_attempt.saturating_add(delivery_count);
    Decoded {
        message: Message::from_parts(parts),
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_through_the_wire_mapping() {
        let mut message = Message::builder(vec![0u8, 1, 255])
            .id("order-42")
            .message_type("order.placed")
            .routing_key("eu.orders")
            .ordering_key("customer-7")
            .header("tenant", "acme")
            .content_type("application/octet-stream")
            .build()
            .unwrap();
        message.set_published_at(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let out = encode(&message, &[(ATTEMPT, "3".into())]).unwrap();
        assert_eq!(out.routing_key, "eu.orders");
        let back = decode("ignored.queue", &out.properties, out.body.clone());
        assert_eq!(back.message, message);
        assert_eq!(back.attempt, 3);
    }

    #[test]
    fn a_plain_client_message_decodes_with_its_routing_key_and_delivery_count() {
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        headers.insert("x-death".into(), AMQPValue::Boolean(true));
        headers.insert("priority".into(), AMQPValue::LongInt(5));
        let properties = BasicProperties::default()
            .with_message_id("abc".into())
            .with_headers(headers);
        let decoded = decode("us.orders", &properties, Bytes::from_static(b"{}"));
        assert_eq!(decoded.attempt, 3, "1 + x-delivery-count");
        let m = decoded.message;
        assert_eq!(m.id().as_str(), "abc");
        assert_eq!(m.routing_key(), Some("us.orders"));
        assert_eq!(m.header("priority"), Some("5"));
        assert_eq!(m.headers().len(), 1, "RabbitMQ's headers are dropped");
    }

    #[test]
    fn ids_longer_than_a_short_string_travel_in_a_header() {
        let id = "i".repeat(256);
        let message = Message::builder("x").id(id.clone()).build().unwrap();
        let out = encode(&message, &[]).unwrap();
        assert!(out.properties.message_id().is_none());
        let back = decode("", &out.properties, out.body.clone());
        assert_eq!(back.message.id().as_str(), id);
    }
}
