//! The wire mapping between a Sluice [`Message`] and a Kafka record: the payload is the
//! record's value, the ordering key its key (same key, same partition), and the rest travels
//! in headers, which a consumer in any language can read.
//!
//! | header | holds |
//! |---|---|
//! | `sluice-id` | the message id |
//! | `sluice-type` | the event type |
//! | `sluice-routing-key` | the routing key (filters are applied by the consumer) |
//! | `sluice-ordering-key` | the ordering key (also the record key) |
//! | `sluice-content-type` | the payload's content type |
//! | `sluice-published-at` | publish time, ms since the Unix epoch (decimal) |
//! | `sluice-deliver-at` | not to be handled before, ms since the Unix epoch (decimal) |
//! | `sluice-attempt` | deliveries before this copy (on records Sluice republished to a retry topic) |
//! | any other | a user header (or a `sluice-dlq-*` envelope header), as UTF-8 |
//!
//! Invariant: decoding an encoded message gives back every field a publisher set; transport
//! headers never reach the user's headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::{Message, MessageId, MessageParts};

/// Header: the message id.
pub const ID: &str = "sluice-id";
/// Header: the event type.
pub const TYPE: &str = "sluice-type";
/// Header: the routing key.
pub const ROUTING_KEY: &str = "sluice-routing-key";
/// Header: the ordering key.
pub const ORDERING_KEY: &str = "sluice-ordering-key";
/// Header: the content type.
pub const CONTENT_TYPE: &str = "sluice-content-type";
/// Header: publish time.
pub const PUBLISHED_AT: &str = "sluice-published-at";
/// Header: due time.
pub const DELIVER_AT: &str = "sluice-deliver-at";
/// Header: deliveries before this copy.
pub const ATTEMPT: &str = "sluice-attempt";

/// Headers that describe transport, not the message: kept out of the user's headers.
fn is_transport(name: &str) -> bool {
    matches!(
        name,
        ID | TYPE | ROUTING_KEY | ORDERING_KEY | CONTENT_TYPE | PUBLISHED_AT | DELIVER_AT | ATTEMPT
    )
}

/// A record ready to produce (without its topic and partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) value: Vec<u8>,
}

fn ms(at: SystemTime) -> Vec<u8> {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string()
        .into_bytes()
}

fn time(bytes: &[u8]) -> Option<SystemTime> {
    std::str::from_utf8(bytes)
        .ok()?
        .parse::<u64>()
        .ok()
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

/// Encodes `message`; `attempt` is set on copies Sluice republishes (deliveries so far).
pub(crate) fn encode(message: &Message, attempt: Option<u32>) -> Outgoing {
    let mut headers = vec![(ID.to_owned(), message.id().as_str().as_bytes().to_vec())];
    let optional = [
        (TYPE, message.message_type()),
        (ROUTING_KEY, message.routing_key()),
        (ORDERING_KEY, message.ordering_key()),
        (CONTENT_TYPE, message.content_type()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            headers.push((name.to_owned(), value.as_bytes().to_vec()));
        }
    }
    if let Some(at) = message.published_at() {
        headers.push((PUBLISHED_AT.to_owned(), ms(at)));
    }
    if let Some(at) = message.deliver_at() {
        headers.push((DELIVER_AT.to_owned(), ms(at)));
    }
    if let Some(attempt) = attempt.filter(|a| *a > 0) {
        headers.push((ATTEMPT.to_owned(), attempt.to_string().into_bytes()));
    }
    for (name, value) in message.headers() {
        headers.push((name.clone(), value.as_bytes().to_vec()));
    }
    Outgoing {
        key: message.ordering_key().map(|k| k.as_bytes().to_vec()),
        headers,
        value: message.payload().to_vec(),
    }
}

impl Outgoing {
    /// A fetched record, as it would be produced again (to re-append it elsewhere unchanged).
    pub(crate) fn from_record(record: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        use rdkafka::message::{Headers, Message as _};
        let headers = record
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            key: record.key().map(<[u8]>::to_vec),
            headers,
            value: record.payload().unwrap_or_default().to_vec(),
        }
    }

    /// The record's headers for the producer.
    pub(crate) fn kafka_headers(&self) -> rdkafka::message::OwnedHeaders {
        self.headers.iter().fold(
            rdkafka::message::OwnedHeaders::new_with_capacity(self.headers.len()),
            |headers, (key, value)| {
                headers.insert(rdkafka::message::Header {
                    key,
                    value: Some(value),
                })
            },
        )
    }

    /// Decodes the record as a consumer would.
    pub(crate) fn decode(&self) -> Result<Incoming, String> {
        decode(
            self.headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
            &self.value,
        )
    }
}

/// A received record as Sluice reads it.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) message: Message,
    /// Deliveries before this copy (`sluice-attempt`), 0 on a first publish.
    pub(crate) attempt_base: u32,
    /// Whether the record carried a `sluice-id`.
    pub(crate) has_id: bool,
}

/// Where a fetched record sits, for records another client produced: their id is
/// `<topic>/<partition>/<offset>` (the same on every read, so consumer idempotency works) and
/// their UTF-8 record key is their ordering key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<&'a [u8]>,
}

/// Decodes a fetched record (see [`Origin`] for records without Sluice's headers).
pub(crate) fn decode_fetched<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: &[u8],
    origin: Origin<'_>,
) -> Result<Incoming, String> {
    let mut incoming = decode(headers, value)?;
    let foreign = !incoming.has_id;
    if foreign {
        let mut parts = incoming.message.into_parts();
        let id = format!("{}/{}/{}", origin.topic, origin.partition, origin.offset);
        parts.id = MessageId::new(id).ok();
        if parts.ordering_key.is_none() {
            parts.ordering_key = origin
                .key
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(str::to_owned);
        }
        incoming.message = Message::from_parts(parts);
    }
    Ok(incoming)
}

/// Decodes a record's headers and value. A record without Sluice's headers (produced by
/// another client) decodes with a generated id and its value as the payload; an id that is
/// not a valid message id is an error (a poison record, for the DLQ).
pub(crate) fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: &[u8],
) -> Result<Incoming, String> {
    let mut parts = MessageParts::default();
    let mut attempt_base = 0;
    for (name, bytes) in headers {
        let bytes = bytes.unwrap_or_default();
        let text = || {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| format!("header `{name}` is not UTF-8"))
        };
        match name {
            ID => parts.id = Some(MessageId::new(text()?).map_err(|e| e.to_string())?),
            TYPE => parts.message_type = Some(text()?),
            ROUTING_KEY => parts.routing_key = Some(text()?),
            ORDERING_KEY => parts.ordering_key = Some(text()?),
            CONTENT_TYPE => parts.content_type = Some(text()?),
            PUBLISHED_AT => parts.published_at = time(bytes),
            DELIVER_AT => parts.deliver_at = time(bytes),
            ATTEMPT => attempt_base = text()?.parse().unwrap_or(0),
            other if !is_transport(other) => {
                parts.headers.insert(other.to_owned(), text()?);
            }
            _ => {}
        }
    }
    parts.payload = value.to_vec().into();
    let has_id = parts.id.is_some();
    Ok(Incoming {
        message: Message::from_parts(parts),
        attempt_base,
        has_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: &Message, attempt: Option<u32>) -> Incoming {
        let out = encode(message, attempt);
        let headers = out
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_slice())));
        decode(headers, &out.value).unwrap()
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let mut message = Message::builder(vec![0u8, 1, 255])
            .id("order-42")
            .message_type("order.placed")
            .routing_key("eu.orders")
            .ordering_key("customer-7")
            .content_type("application/octet-stream")
            .header("tenant", "acme")
            .deliver_after(Duration::from_secs(5))
            .build()
            .unwrap();
        message.set_published_at(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let out = encode(&message, None);
        assert_eq!(
            out.key.as_deref(),
            Some(&b"customer-7"[..]),
            "the ordering key is the key"
        );
        let back = round_trip(&message, Some(3));
        assert_eq!(back.attempt_base, 3);
        let back = back.message;
        assert_eq!(back.id(), message.id());
        assert_eq!(back.message_type(), Some("order.placed"));
        assert_eq!(back.routing_key(), Some("eu.orders"));
        assert_eq!(back.ordering_key(), Some("customer-7"));
        assert_eq!(back.content_type(), Some("application/octet-stream"));
        assert_eq!(
            back.headers(),
            message.headers(),
            "no transport header leaks"
        );
        assert_eq!(back.payload(), message.payload());
        assert_eq!(back.published_at(), message.published_at());
        let due = |m: &Message| {
            m.deliver_at()
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        assert_eq!(due(&back), due(&message));
    }

    #[test]
    fn foreign_records_get_a_stable_id_and_their_key_as_ordering_key() {
        let origin = Origin {
            topic: "dev.orders",
            partition: 2,
            offset: 41,
            key: Some(b"customer-7"),
        };
        let first = decode_fetched([], b"x", origin).unwrap().message;
        let again = decode_fetched([], b"x", origin).unwrap().message;
        assert_eq!(first.id().as_str(), "dev.orders/2/41");
        assert_eq!(first.id(), again.id(), "the same id on every read");
        assert_eq!(first.ordering_key(), Some("customer-7"));
        let ours = decode_fetched([(ID, Some(&b"m-1"[..]))], b"x", origin)
            .unwrap()
            .message;
        assert_eq!(ours.id().as_str(), "m-1", "Sluice's own id is kept");
        assert_eq!(ours.ordering_key(), None, "and its headers are the truth");
    }

    #[test]
    fn foreign_records_decode_and_bad_ids_are_named() {
        let plain = decode([], b"hello").unwrap();
        assert_eq!(plain.message.payload().as_ref(), b"hello");
        assert_eq!(plain.attempt_base, 0);
        let err = decode([(ID, Some(&[0xff][..]))], b"x").unwrap_err();
        assert!(err.contains("sluice-id"), "{err}");
    }
}
