//! The message: what producers publish and consumers receive.
//!
//! Invariants enforced by [`MessageBuilder::build`]: the id is 1 to 256 bytes; header names
//! are `[A-Za-z0-9_.-]{1,128}` and never start with the reserved prefix `sluice-`; headers
//! (names plus values) take at most [`MAX_HEADERS_BYTES`]. The payload size is checked
//! against the backend's [`Capabilities::max_message_size`](crate::Capabilities) at publish.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::error::MessageError;

/// Longest message id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Largest total size of a message's headers (names plus values), in bytes.
pub const MAX_HEADERS_BYTES: usize = 16 * 1024;
/// Longest routing or ordering key, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// The header prefix Sluice reserves for its own metadata (DLQ envelope, trace context).
pub const RESERVED_PREFIX: &str = "sluice-";

/// A message id: the idempotency key. UUIDv7 by default; set it to a business key
/// (`order-42-placed`) to make a producer's retries and a consumer's duplicates recognisable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// A new time-ordered UUIDv7 id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// An id from a string, validated (1 to [`MAX_ID_LEN`] bytes).
    pub fn new(id: impl Into<String>) -> Result<Self, MessageError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(MessageError::InvalidId {
                len: id.len(),
                max: MAX_ID_LEN,
            });
        }
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message's headers: a sorted string map.
pub type Headers = BTreeMap<String, String>;

/// A message, as published and as delivered.
///
/// Build one with [`Message::builder`]. Backends rebuild received messages with
/// [`Message::from_parts`], which keeps reserved `sluice-` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    id: MessageId,
    message_type: Option<String>,
    routing_key: Option<String>,
    ordering_key: Option<String>,
    headers: Headers,
    content_type: Option<String>,
    payload: Bytes,
    published_at: Option<SystemTime>,
    deliver_at: Option<SystemTime>,
}

/// All fields of a [`Message`], for backends that decode one from the wire.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MessageParts {
    /// The id; `None` generates one.
    pub id: Option<MessageId>,
    /// The event type.
    pub message_type: Option<String>,
    /// The routing key.
    pub routing_key: Option<String>,
    /// The ordering key.
    pub ordering_key: Option<String>,
    /// All headers, reserved ones included.
    pub headers: Headers,
    /// The payload's content type.
    pub content_type: Option<String>,
    /// The payload.
    pub payload: Bytes,
    /// When the message was published.
    pub published_at: Option<SystemTime>,
    /// When the message becomes deliverable.
    pub deliver_at: Option<SystemTime>,
}

impl Message {
    /// Starts a message with this payload.
    pub fn builder(payload: impl Into<Bytes>) -> MessageBuilder {
        MessageBuilder {
            parts: MessageParts {
                payload: payload.into(),
                ..MessageParts::default()
            },
            delay: None,
            id_error: None,
        }
    }

    /// A message with a JSON payload (`content_type` `application/json`).
    pub fn json_builder(payload: impl Into<Bytes>) -> MessageBuilder {
        Self::builder(payload).content_type("application/json")
    }

    /// Rebuilds a message from its parts without checking the reserved header prefix (for
    /// backends decoding what they stored, and for the DLQ envelope).
    pub fn from_parts(parts: MessageParts) -> Self {
        Self {
            id: parts.id.unwrap_or_else(MessageId::generate),
            message_type: parts.message_type,
            routing_key: parts.routing_key,
            ordering_key: parts.ordering_key,
            headers: parts.headers,
            content_type: parts.content_type,
            payload: parts.payload,
            published_at: parts.published_at,
            deliver_at: parts.deliver_at,
        }
    }

    /// Splits the message into its parts.
    pub fn into_parts(self) -> MessageParts {
        MessageParts {
            id: Some(self.id),
            message_type: self.message_type,
            routing_key: self.routing_key,
            ordering_key: self.ordering_key,
            headers: self.headers,
            content_type: self.content_type,
            payload: self.payload,
            published_at: self.published_at,
            deliver_at: self.deliver_at,
        }
    }

    /// The id (idempotency key).
    pub fn id(&self) -> &MessageId {
        &self.id
    }
    /// The event type, for dispatch to typed handlers.
    pub fn message_type(&self) -> Option<&str> {
        self.message_type.as_deref()
    }
    /// The routing key, matched against subscription filters.
    pub fn routing_key(&self) -> Option<&str> {
        self.routing_key.as_deref()
    }
    /// The ordering key: messages with the same key are delivered in publish order, per
    /// subscription, at the backend's ordering level.
    pub fn ordering_key(&self) -> Option<&str> {
        self.ordering_key.as_deref()
    }
    /// All headers, reserved `sluice-` ones included.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// One header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    /// The payload's content type.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// When the backend accepted the message (set at publish).
    pub fn published_at(&self) -> Option<SystemTime> {
        self.published_at
    }
    /// When the message becomes deliverable, if it was delayed or scheduled.
    pub fn deliver_at(&self) -> Option<SystemTime> {
        self.deliver_at
    }

    /// Size counted against a backend's message size limit: payload plus headers plus keys.
    pub fn size(&self) -> usize {
        self.payload.len()
            + headers_size(&self.headers)
            + self.id.0.len()
            + self.message_type.as_ref().map_or(0, String::len)
            + self.routing_key.as_ref().map_or(0, String::len)
            + self.ordering_key.as_ref().map_or(0, String::len)
            + self.content_type.as_ref().map_or(0, String::len)
    }

    /// Sets `published_at` (backends call this when they accept the message).
    pub fn set_published_at(&mut self, at: SystemTime) {
        self.published_at = Some(at);
    }

    /// Sets or clears `deliver_at`.
    pub fn set_deliver_at(&mut self, at: Option<SystemTime>) {
        self.deliver_at = at;
    }

    /// Sets a header, reserved names included (for backends and the runtime: envelope,
    /// trace context). Producers use [`MessageBuilder::header`], which refuses `sluice-`.
    pub fn set_reserved_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.insert(name.into(), value.into());
    }

    /// Removes every reserved `sluice-` header whose name starts with `prefix`.
    pub fn remove_headers_with_prefix(&mut self, prefix: &str) {
        self.headers.retain(|k, _| !k.starts_with(prefix));
    }

    /// Checks the message against a backend's size limit.
    pub fn check_size(&self, max: usize) -> Result<(), MessageError> {
        let size = self.size();
        if size > max {
            return Err(MessageError::TooLarge {
                id: self.id.0.clone(),
                size,
                max,
            });
        }
        Ok(())
    }
}

/// The longest delay a message may ask for: 100 years.
pub const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + delay`, refusing delays past [`MAX_DELAY`] (which would overflow the clock).
pub fn deliver_after(delay: Duration) -> Result<SystemTime, MessageError> {
    let too_long = MessageError::DelayTooLong {
        requested: delay,
        max: MAX_DELAY,
    };
    if delay > MAX_DELAY {
        return Err(too_long);
    }
    SystemTime::now().checked_add(delay).ok_or(too_long)
}

fn headers_size(headers: &Headers) -> usize {
    headers.iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn validate_header_name(name: &str) -> Result<(), MessageError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid {
        return Err(MessageError::InvalidHeaderName {
            name: name.to_owned(),
        });
    }
    if name.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
        return Err(MessageError::ReservedHeader {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn validate_key(field: &'static str, value: &str) -> Result<(), MessageError> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > MAX_KEY_LEN {
        "it is longer than 255 bytes"
    } else if value.chars().any(char::is_control) {
        "it contains a control character"
    } else if field == "routing_key" && value.split('.').any(|w| w == "*" || w == "#") {
        "`*` and `#` are wildcards for filters, not routing keys"
    } else {
        return Ok(());
    };
    Err(MessageError::InvalidKey {
        field,
        value: value.to_owned(),
        reason,
    })
}

/// Builds a [`Message`]; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
#[must_use]
pub struct MessageBuilder {
    parts: MessageParts,
    delay: Option<Duration>,
    id_error: Option<MessageError>,
}

impl MessageBuilder {
    /// Sets the id (idempotency key); by default a UUIDv7 is generated.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        match MessageId::new(id) {
            Ok(id) => {
                self.parts.id = Some(id);
                self.id_error = None;
            }
            // Remembered: `build` reports it.
            Err(err) => self.id_error = Some(err),
        }
        self
    }
    /// Sets the event type (`order.placed`).
    pub fn message_type(mut self, message_type: impl Into<String>) -> Self {
        self.parts.message_type = Some(message_type.into());
        self
    }
    /// Sets the routing key (`eu.orders.placed`), matched against subscription filters.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.parts.routing_key = Some(key.into());
        self
    }
    /// Sets the ordering key: same key, delivered in publish order per subscription.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.parts.ordering_key = Some(key.into());
        self
    }
    /// Adds a header. Names starting with `sluice-` are refused at `build`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.parts.headers.insert(name.into(), value.into());
        self
    }
    /// Sets the payload's content type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.parts.content_type = Some(content_type.into());
        self
    }
    /// Delays delivery by `delay`, counted from [`build`](Self::build) (build the message
    /// right before publishing it; `Publisher::publish_delayed` counts from the call).
    pub fn deliver_after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self.parts.deliver_at = None;
        self
    }
    /// Schedules delivery at `at`.
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.parts.deliver_at = Some(at);
        self.delay = None;
        self
    }

    /// Validates and builds the message. A relative delay is turned into `deliver_at` here,
    /// against the system clock.
    pub fn build(self) -> Result<Message, MessageError> {
        let MessageBuilder {
            mut parts,
            delay,
            id_error,
        } = self;
        if let Some(err) = id_error {
            return Err(err);
        }
        for name in parts.headers.keys() {
            validate_header_name(name)?;
        }
        let size = headers_size(&parts.headers);
        if size > MAX_HEADERS_BYTES {
            return Err(MessageError::HeadersTooLarge {
                size,
                max: MAX_HEADERS_BYTES,
            });
        }
        if let Some(key) = &parts.routing_key {
            validate_key("routing_key", key)?;
        }
        if let Some(key) = &parts.ordering_key {
            validate_key("ordering_key", key)?;
        }
        if let Some(delay) = delay {
            parts.deliver_at = Some(deliver_after(delay)?);
        }
        Ok(Message::from_parts(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_fills_every_field_and_generates_an_id() {
        let m = Message::builder("hi")
            .message_type("order.placed")
            .routing_key("eu.orders")
            .ordering_key("customer-1")
            .header("tenant", "acme")
            .content_type("text/plain")
            .build()
            .unwrap();
        assert_eq!(m.id().as_str().len(), 36);
        assert_eq!(m.message_type(), Some("order.placed"));
        assert_eq!(m.routing_key(), Some("eu.orders"));
        assert_eq!(m.ordering_key(), Some("customer-1"));
        assert_eq!(m.header("tenant"), Some("acme"));
        assert_eq!(m.payload().as_ref(), b"hi");
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        let err = Message::builder("x").header("sluice-attempt", "1").build();
        assert!(matches!(err, Err(MessageError::ReservedHeader { .. })));
        let err = Message::builder("x").header("Sluice-Attempt", "1").build();
        assert!(matches!(err, Err(MessageError::ReservedHeader { .. })));
        let err = Message::builder("x").header("bad name", "1").build();
        assert!(matches!(err, Err(MessageError::InvalidHeaderName { .. })));
        let big = "v".repeat(MAX_HEADERS_BYTES);
        let err = Message::builder("x").header("k", big).build();
        assert!(matches!(err, Err(MessageError::HeadersTooLarge { .. })));
    }

    #[test]
    fn invalid_ids_and_keys_are_refused() {
        assert!(Message::builder("x").id("").build().is_err());
        assert!(Message::builder("x").id("a".repeat(257)).build().is_err());
        assert!(Message::builder("x").routing_key("eu.*").build().is_err());
        assert!(Message::builder("x").ordering_key("").build().is_err());
        let ok = Message::builder("x").id("order-42-placed").build().unwrap();
        assert_eq!(ok.id().as_str(), "order-42-placed");
    }

    #[test]
    fn an_absurd_delay_is_an_error_not_a_panic() {
        let err = Message::builder("x").deliver_after(Duration::MAX).build();
        assert!(
            matches!(err, Err(MessageError::DelayTooLong { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn size_check_names_the_limit() {
        let m = Message::builder(vec![0u8; 2000]).id("big").build().unwrap();
        let err = m.check_size(1024).unwrap_err();
        assert!(err.to_string().contains("at most 1024"), "{err}");
        assert!(m.check_size(4096).is_ok());
    }
}
