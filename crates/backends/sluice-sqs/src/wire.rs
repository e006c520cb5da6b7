//! The wire mapping between a Sluice [`Message`] and an SNS/SQS message: a body and at most
//! ten message attributes (SNS's limit). `docs/sqs.md` documents it for consumers in other
//! languages.
//!
//! | attribute | type | holds |
//! |---|---|---|
//! | `sluice-id` | String | the message id (always) |
//! | `routing_key` | String | the routing key (the name SNS filter policies match) |
//! | `sluice-type` | String | the event type |
//! | `sluice-content-type` | String | the payload's content type |
//! | `sluice-ordering-key` | String | the ordering key (also the FIFO `MessageGroupId`) |
//! | `sluice-headers` | String | every header, as one JSON object |
//! | `sluice-published-at` | Number | publish time, ms since the Unix epoch |
//! | `sluice-deliver-at` | Number | not to be delivered before, ms since the Unix epoch |
//! | `sluice-encoding` | String | `base64` (binary payload) or `empty`; absent: the body is the payload as UTF-8 |
//! | `sluice-attempt` | Number | deliveries before this copy (on messages Sluice re-sent) |
//!
//! Invariant: decoding an encoded message gives back every field a publisher set; a body
//! always consists of characters SQS accepts (XML 1.0 characters), which is why payloads
//! that are not such text travel base64-encoded.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sluice_core::{Error, Message, MessageError, MessageId, MessageParts};

use crate::filter::ROUTING_KEY_ATTRIBUTE;

/// Attribute: the message id.
pub const ID: &str = "sluice-id";
/// Attribute: the event type.
pub const TYPE: &str = "sluice-type";
/// Attribute: the routing key (named for filter policies).
pub const ROUTING_KEY: &str = ROUTING_KEY_ATTRIBUTE;
/// Attribute: the content type.
pub const CONTENT_TYPE: &str = "sluice-content-type";
/// Attribute: the ordering key.
pub const ORDERING_KEY: &str = "sluice-ordering-key";
/// Attribute: the headers as one JSON object.
pub const HEADERS: &str = "sluice-headers";
/// Attribute: publish time (ms since the epoch).
pub const PUBLISHED_AT: &str = "sluice-published-at";
/// Attribute: due time (ms since the epoch).
pub const DELIVER_AT: &str = "sluice-deliver-at";
/// Attribute: how the body encodes the payload.
pub const ENCODING: &str = "sluice-encoding";
/// Attribute: deliveries of this message before this physical copy.
pub const ATTEMPT: &str = "sluice-attempt";

/// The body of an empty payload (SNS refuses empty messages).
const EMPTY_BODY: &str = "(empty)";

/// SNS's message size limit (body plus attribute names, types and values).
pub const SNS_MAX_BYTES: usize = 256 * 1024;

/// One message attribute, independent of the SDK (SNS and SQS have their own types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attribute {
    pub(crate) name: &'static str,
    /// `String` or `Number`.
    pub(crate) data_type: &'static str,
    pub(crate) value: String,
}

/// A message ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) body: String,
    pub(crate) attributes: Vec<Attribute>,
}

impl Outgoing {
    /// Its size as SNS and SQS count it.
    pub(crate) fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|a| a.name.len() + a.data_type.len() + a.value.len())
                .sum::<usize>()
    }
}

fn ms(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string()
}

fn time(ms: &str) -> Option<SystemTime> {
    ms.parse::<u64>()
        .ok()
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

/// Whether SQS accepts `text` as a body: XML 1.0 characters only.
fn is_sqs_text(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
    })
}

/// Encodes `message`; `attempt` is set on copies Sluice re-sends (deliveries so far).
pub(crate) fn encode(message: &Message, attempt: Option<u32>) -> Result<Outgoing, Error> {
    let string = |name, value: &str| Attribute {
        name,
        data_type: "String",
        value: value.to_owned(),
    };
    let number = |name, value: String| Attribute {
        name,
        data_type: "Number",
        value,
    };
    let mut attributes = vec![string(ID, message.id().as_str())];
    let optional = [
        (ROUTING_KEY, message.routing_key()),
        (TYPE, message.message_type()),
        (CONTENT_TYPE, message.content_type()),
        (ORDERING_KEY, message.ordering_key()),
    ];
    for (name, value) in optional {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            attributes.push(string(name, value));
        }
    }
    if !message.headers().is_empty() {
        let json = serde_json::to_string(message.headers())
            .map_err(|err| Error::backend(format!("encoding headers: {err}"), false))?;
        attributes.push(string(HEADERS, &json));
    }
    if let Some(at) = message.published_at() {
        attributes.push(number(PUBLISHED_AT, ms(at)));
    }
    if let Some(at) = message.deliver_at() {
        attributes.push(number(DELIVER_AT, ms(at)));
    }
    if let Some(attempt) = attempt.filter(|a| *a > 0) {
        attributes.push(number(ATTEMPT, attempt.to_string()));
    }
    let payload = message.payload();
    let body = match std::str::from_utf8(payload) {
        _ if payload.is_empty() => {
            attributes.push(string(ENCODING, "empty"));
            EMPTY_BODY.to_owned()
        }
        Ok(text) if is_sqs_text(text) => text.to_owned(),
        _ => {
            attributes.push(string(ENCODING, "base64"));
            base64::engine::general_purpose::STANDARD.encode(payload)
        }
    };
    Ok(Outgoing { body, attributes })
}

/// Checks an encoded message against SNS's limit.
pub(crate) fn check_sns_size(message: &Message, out: &Outgoing) -> Result<(), Error> {
    let size = out.size();
    if size > SNS_MAX_BYTES {
        return Err(MessageError::TooLarge {
            id: message.id().to_string(),
            size,
            max: SNS_MAX_BYTES,
        }
        .into());
    }
    Ok(())
}

/// A received message: the Sluice message and the transport facts beside it.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) message: Message,
    /// Deliveries before this physical copy (`sluice-attempt`).
    pub(crate) attempt_base: u32,
}

/// The id of a message another producer sent without `sluice-id`: derived from its SQS
/// message id, so every redelivery of it has the same id (and an idempotent consumer
/// recognises it).
pub(crate) fn foreign_id(sqs_message_id: &str) -> String {
    format!("sqs-{sqs_message_id}")
}

/// The headers in `sluice-headers`: a JSON object whose string values are taken as they
/// are, numbers and booleans as their JSON text, `null` as the empty string, and arrays and
/// objects as their JSON (as RabbitMQ's headers of other types are read).
fn headers(json: &str) -> Result<BTreeMap<String, String>, String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|err| format!("{HEADERS} is not a JSON object: {err}"))?;
    Ok(object
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                serde_json::Value::String(text) => text,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            (name, text)
        })
        .collect())
}

/// Decodes a body and its attributes (name → string value). A message without `sluice-id`
/// (sent by another producer) gets the id [`foreign_id`] of `sqs_message_id` (a fresh one
/// only if SQS gave none), and the body as payload.
pub(crate) fn decode(
    body: &str,
    attributes: &HashMap<String, String>,
    sqs_message_id: Option<&str>,
) -> Result<Incoming, String> {
    let get = |name: &str| attributes.get(name).cloned();
    let payload: Vec<u8> = match get(ENCODING).as_deref() {
        Some("empty") => Vec::new(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|err| format!("the base64 body does not decode: {err}"))?,
        Some(other) => return Err(format!("unknown {ENCODING} `{other}`")),
        None => body.as_bytes().to_vec(),
    };
    let mut parts = MessageParts::default();
    parts.id = match get(ID) {
        Some(id) => Some(MessageId::new(id).map_err(|err| err.to_string())?),
        None => sqs_message_id.and_then(|id| MessageId::new(foreign_id(id)).ok()),
    };
    parts.message_type = get(TYPE);
    parts.routing_key = get(ROUTING_KEY);
    parts.ordering_key = get(ORDERING_KEY);
    parts.content_type = get(CONTENT_TYPE);
    if let Some(json) = get(HEADERS) {
        parts.headers = headers(&json)?;
    }
    parts.payload = payload.into();
    parts.published_at = get(PUBLISHED_AT).as_deref().and_then(time);
    parts.deliver_at = get(DELIVER_AT).as_deref().and_then(time);
    let attempt_base = get(ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0);
    Ok(Incoming {
        message: Message::from_parts(parts),
        attempt_base,
    })
}

/// A FIFO deduplication id for a message id: the id itself where SQS accepts it (at most 128
/// characters of ASCII letters, digits and punctuation), otherwise its SHA-256 in hex.
pub(crate) fn dedup_id(id: &str) -> String {
    let fits = id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    if fits {
        return id.to_owned();
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(id.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A FIFO group id for an ordering key (same rules as [`dedup_id`]).
pub(crate) fn group_id(key: &str) -> String {
    dedup_id(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(out: &Outgoing) -> HashMap<String, String> {
        out.attributes
            .iter()
            .map(|a| (a.name.to_owned(), a.value.clone()))
            .collect()
    }

    fn round_trip(message: &Message) -> Message {
        let out = encode(message, None).unwrap();
        assert!(out.attributes.len() <= 10, "SNS allows 10 attributes");
        assert!(is_sqs_text(&out.body));
        decode(&out.body, &attrs(&out), None).unwrap().message
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let mut message = Message::builder(b"{\"total\":42}".to_vec())
            .id("order-42")
            .message_type("order.placed")
            .routing_key("eu.orders")
            .ordering_key("customer-7")
            .content_type("application/json")
            .header("tenant", "acme \"quoted\"")
            .deliver_after(Duration::from_secs(5))
            .build()
            .unwrap();
        message.set_published_at(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let back = round_trip(&message);
        assert_eq!(back.id(), message.id());
        assert_eq!(back.message_type(), Some("order.placed"));
        assert_eq!(back.routing_key(), Some("eu.orders"));
        assert_eq!(back.ordering_key(), Some("customer-7"));
        assert_eq!(back.content_type(), Some("application/json"));
        assert_eq!(back.headers(), message.headers());
        assert_eq!(back.payload(), message.payload());
        assert_eq!(back.published_at(), message.published_at());
        let due = |m: &Message| m.deliver_at().unwrap().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(due(&back).as_millis(), due(&message).as_millis());
    }

    #[test]
    fn binary_and_empty_payloads_travel_as_valid_bodies() {
        for payload in [
            vec![0u8, 1, 2, 255],
            b"a\x01b".to_vec(),
            Vec::new(),
            vec![0xEF, 0xBF, 0xBF],
        ] {
            let message = Message::builder(payload.clone()).build().unwrap();
            assert_eq!(round_trip(&message).payload().as_ref(), &payload[..]);
        }
        let text = Message::builder("héllo\tworld".as_bytes().to_vec())
            .build()
            .unwrap();
        let out = encode(&text, None).unwrap();
        assert_eq!(out.body, "héllo\tworld", "text is sent as it is");
    }

    #[test]
    fn size_counts_attributes_and_sns_limit_is_checked() {
        let message = Message::builder(vec![b'x'; SNS_MAX_BYTES]).build().unwrap();
        let out = encode(&message, None).unwrap();
        assert!(out.size() > SNS_MAX_BYTES);
        let err = check_sns_size(&message, &out).unwrap_err();
        assert!(
            err.to_string().contains(&SNS_MAX_BYTES.to_string()),
            "{err}"
        );
    }

    #[test]
    fn foreign_messages_decode_and_bad_attributes_are_named() {
        let sqs_id = Some("6a1f4c2e-0c1d-4b8e-9a57-2f3b1c0d9e8f");
        let plain = decode("hello", &HashMap::new(), sqs_id).unwrap();
        assert_eq!(plain.message.payload().as_ref(), b"hello");
        let again = decode("hello", &HashMap::new(), sqs_id).unwrap();
        assert_eq!(
            plain.message.id(),
            again.message.id(),
            "a redelivery keeps its id"
        );
        assert_eq!(
            plain.message.id().as_str(),
            "sqs-6a1f4c2e-0c1d-4b8e-9a57-2f3b1c0d9e8f"
        );
        let mut bad = HashMap::new();
        bad.insert(ENCODING.to_owned(), "base64".to_owned());
        assert!(decode("***", &bad, sqs_id).unwrap_err().contains("base64"));
        let mut attempt = HashMap::new();
        attempt.insert(ATTEMPT.to_owned(), "3".to_owned());
        assert_eq!(decode("x", &attempt, sqs_id).unwrap().attempt_base, 3);
    }

    #[test]
    fn header_values_of_any_json_type_are_read_as_text() {
        let mut attributes = HashMap::new();
        attributes.insert(
            HEADERS.to_owned(),
            r#"{"tenant":"globex","priority":5,"vip":true,"ratio":0.5,"none":null,"tags":["a",1]}"#
                .to_owned(),
        );
        let m = decode("x", &attributes, None).unwrap().message;
        assert_eq!(m.header("tenant"), Some("globex"));
        assert_eq!(m.header("priority"), Some("5"));
        assert_eq!(m.header("vip"), Some("true"));
        assert_eq!(m.header("ratio"), Some("0.5"));
        assert_eq!(m.header("none"), Some(""));
        assert_eq!(m.header("tags"), Some(r#"["a",1]"#));
        attributes.insert(HEADERS.to_owned(), r#"["tenant"]"#.to_owned());
        let err = decode("x", &attributes, None).unwrap_err();
        assert!(err.contains("not a JSON object"), "{err}");
    }

    #[test]
    fn dedup_and_group_ids_fit_fifo_rules() {
        assert_eq!(dedup_id("order-42"), "order-42");
        let long = dedup_id(&"x".repeat(200));
        assert_eq!(long.len(), 64);
        assert_eq!(dedup_id("with space").len(), 64);
    }
}
