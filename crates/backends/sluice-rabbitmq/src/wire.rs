//! The wire mapping between a Sluice [`Message`] and an AMQP message (see
//! `docs/rabbitmq.md`, which a plain AMQP client can follow to interoperate).
//!
//! Invariant: decoding an encoded message gives back every field a publisher set (id, type,
//! keys, headers, content type, payload, published_at); the transport headers Sluice adds
//! (`sluice-attempt`, `sluice-routing-key`, …) and RabbitMQ's dead-lettering headers
//! (`x-death`, …) never reach the user's headers.

use std::time::{Duration, UNIX_EPOCH};

use base64::prelude::{Engine as _, BASE64_STANDARD};
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

/// A header value as text: other clients send numbers, booleans, byte arrays, arrays and
/// tables, and none of them is dropped (`docs/rabbitmq.md`, "Headers from other clients").
/// Scalars become their text; a byte array its UTF-8 text (standard base64 when it is not
/// UTF-8); an array or a table its JSON; a void value the empty string.
fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(bytes) => match std::str::from_utf8(bytes.as_slice()) {
            Ok(text) => text.to_owned(),
            Err(_) => BASE64_STANDARD.encode(bytes.as_slice()),
        },
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => json(value).to_string(),
        other => match json(other) {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            scalar => scalar.to_string(),
        },
    }
}

/// A header value as JSON (for arrays and tables, whose elements may be of any type).
fn json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        // Through their shortest text, so 0.1f32 stays 0.1 and not 0.10000000149011612.
        AMQPValue::Float(n) => serde_json::from_str(&n.to_string()).unwrap_or(Value::Null),
        AMQPValue::Double(n) => serde_json::from_str(&n.to_string()).unwrap_or(Value::Null),
        AMQPValue::DecimalValue(d) => {
            let digits = d.value.to_string();
            let scale = usize::from(d.scale);
            let text = if scale == 0 {
                digits
            } else {
                let padded = format!("{digits:0>width$}", width = scale + 1);
                let (whole, fraction) = padded.split_at(padded.len() - scale);
                format!("{whole}.{fraction}")
            };
            Value::String(text)
        }
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) | AMQPValue::ByteArray(_) => {
            Value::String(text(value))
        }
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(json).collect()),
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
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
        other => text(other).parse().ok(),
    }
}

/// A received AMQP message as a Sluice message, with its attempt.
pub(crate) struct Decoded {
    pub(crate) message: Message,
    /// `sluice-attempt` (1 if absent) plus `x-delivery-count` (0 if absent).
    pub(crate) attempt: u32,
}

/// Where a received message came from: the delivery's exchange and routing key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route<'a> {
    /// The exchange it was published (or dead-lettered) to; `""` is the default exchange.
    pub(crate) exchange: &'a str,
    /// The AMQP routing key.
    pub(crate) routing_key: &'a str,
}

impl<'a> Route<'a> {
    /// The route of a delivery, from its `exchange` and `routing_key` fields.
    pub(crate) fn new(exchange: &'a ShortString, routing_key: &'a ShortString) -> Self {
        Route {
            exchange: exchange.as_str(),
            routing_key: routing_key.as_str(),
        }
    }

    /// The message's routing key, if this route carries one: through the default exchange
    /// the AMQP routing key is a queue's name (a retry tier, the DLQ, a redrive), never the
    /// message's.
    fn key(self) -> Option<&'a str> {
        (!self.exchange.is_empty() && !self.routing_key.is_empty()).then_some(self.routing_key)
    }
}

/// Decodes a received message. A message without `message_id` (a plain client that set
/// none) gets a fresh id.
pub(crate) fn decode(route: Route<'_>, properties: &BasicProperties, body: Bytes) -> Decoded {
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
                ROUTING_KEY => routing = Some(text(value)).filter(|key| !key.is_empty()),
                ORDERING_KEY => parts.ordering_key = Some(text(value)),
                LONG_ID => long_id = Some(text(value)),
                PUBLISHED_AT => published_at = humantime::parse_rfc3339(&text(value)).ok(),
                _ if is_transport_header(name) => {}
                _ => {
                    parts.headers.insert(name.to_owned(), text(value));
                }
            }
        }
    }
    let id = long_id.or_else(|| properties.message_id().as_ref().map(|s| s.to_string()));
    parts.id = id.and_then(|id| MessageId::new(id).ok());
    parts.message_type = properties.kind().as_ref().map(|s| s.to_string());
    parts.content_type = properties.content_type().as_ref().map(|s| s.to_string());
    parts.routing_key = routing.or_else(|| route.key().map(str::to_owned));
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
    use lapin::types::{ByteArray, DecimalValue, FieldArray};

    use super::*;

    const TOPIC: Route<'static> = Route {
        exchange: "ns.orders",
        routing_key: "",
    };

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
        let route = Route {
            exchange: "",
            routing_key: "ns.billing.dlq",
        };
        let back = decode(route, &out.properties, out.body.clone());
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
        let route = Route {
            exchange: "ns.orders",
            routing_key: "us.orders",
        };
        let decoded = decode(route, &properties, Bytes::from_static(b"{}"));
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
        let back = decode(TOPIC, &out.properties, out.body.clone());
        assert_eq!(back.message.id().as_str(), id);
    }

    #[test]
    fn header_values_of_every_amqp_type_are_kept_as_text() {
        let mut table = FieldTable::default();
        table.insert("region".into(), long_string("eu"));
        table.insert("weight".into(), AMQPValue::Double(1.5));
        let mut headers = FieldTable::default();
        let cases: [(&str, AMQPValue, &str); 9] = [
            (
                "text-bytes",
                AMQPValue::ByteArray(ByteArray::from(b"globex".to_vec())),
                "globex",
            ),
            (
                "raw-bytes",
                AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0x00])),
                "/wA=",
            ),
            (
                "list",
                AMQPValue::FieldArray(FieldArray::from(vec![
                    long_string("a"),
                    AMQPValue::LongInt(2),
                    AMQPValue::Boolean(true),
                ])),
                r#"["a",2,true]"#,
            ),
            (
                "table",
                AMQPValue::FieldTable(table),
                r#"{"region":"eu","weight":1.5}"#,
            ),
            ("float", AMQPValue::Float(0.1), "0.1"),
            ("negative", AMQPValue::LongLongInt(-7), "-7"),
            (
                "price",
                AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 5 }),
                "0.05",
            ),
            ("flag", AMQPValue::Boolean(false), "false"),
            ("nothing", AMQPValue::Void, ""),
        ];
        for (name, value, _) in &cases {
            headers.insert((*name).into(), value.clone());
        }
        let properties = BasicProperties::default()
            .with_message_id("m".into())
            .with_headers(headers);
        let m = decode(TOPIC, &properties, Bytes::new()).message;
        for (name, _, expected) in &cases {
            assert_eq!(m.header(name), Some(*expected), "header {name}");
        }
        assert_eq!(m.headers().len(), cases.len(), "no header is dropped");
    }

    #[test]
    fn a_queue_name_is_never_taken_for_a_routing_key() {
        // Published without a routing key, then dead-lettered: the DLQ delivery's AMQP
        // routing key is the DLQ's name, and the message still has no routing key.
        let message = Message::builder("x").id("m").build().unwrap();
        let out = encode(&message, &[]).unwrap();
        let dlq = Route {
            exchange: "",
            routing_key: "ns.billing.dlq",
        };
        assert_eq!(
            decode(dlq, &out.properties, Bytes::new())
                .message
                .routing_key(),
            None
        );
        // Dead-lettered by RabbitMQ through a dead-letter exchange that is the topic's: the
        // key is the message's own.
        let topic = Route {
            exchange: "ns.orders",
            routing_key: "eu.orders",
        };
        let plain = BasicProperties::default().with_message_id("m".into());
        assert_eq!(
            decode(topic, &plain, Bytes::new()).message.routing_key(),
            Some("eu.orders")
        );
        // A copy a plain client sent to the queue with `sluice-routing-key` keeps it.
        let mut headers = FieldTable::default();
        headers.insert(ROUTING_KEY.into(), long_string("eu.orders"));
        let copy = plain.with_headers(headers);
        let queue = Route {
            exchange: "",
            routing_key: "ns.billing",
        };
        assert_eq!(
            decode(queue, &copy, Bytes::new()).message.routing_key(),
            Some("eu.orders")
        );
    }
}
