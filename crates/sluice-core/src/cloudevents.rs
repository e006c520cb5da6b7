//! CloudEvents 1.0 on Sluice messages: how each attribute of an event is kept, so that an
//! event published through `sluice serve`'s HTTP API (structured or binary mode) reaches a
//! Rust handler with every attribute, and a message published from Rust reads as a complete
//! CloudEvent over HTTP.
//!
//! | CloudEvents attribute | Sluice message |
//! |---|---|
//! | `id` | [`Message::id`](crate::Message::id) |
//! | `type` | [`Message::message_type`](crate::Message::message_type) (`sluice.message` when absent) |
//! | `datacontenttype` | [`Message::content_type`](crate::Message::content_type) |
//! | `source` | header [`SOURCE`] (`/sluice/topics/TOPIC` when absent) |
//! | `subject` | header [`SUBJECT`] |
//! | `time` | header [`TIME`] (the publish time when absent) |
//! | `dataschema` | header [`DATASCHEMA`] |
//! | `partitionkey` (partitioning extension) | [`Message::ordering_key`](crate::Message::ordering_key) |
//! | any other extension `name` | header `name` (so `traceparent` and `tracestate` join the trace) |
//! | `data` / `data_base64` / the binary-mode body | [`Message::payload`](crate::Message::payload) |
//!
//! `specversion` is always `1.0` and is not stored. Headers whose names are not valid
//! attribute names (lower-case letters and digits) are not shown as extensions.
//!
//! ```
//! use sluice_core::{cloudevents, Message};
//!
//! let event = Message::json_builder(r#"{"total": 12}"#)
//!     .id("A234-1234-1234")
//!     .message_type("com.example.order.placed")
//!     .header(cloudevents::SOURCE, "/shop/orders")
//!     .header(cloudevents::SUBJECT, "order-42")
//!     .build()
//!     .unwrap();
//! assert_eq!(cloudevents::source(&event), Some("/shop/orders"));
//! ```

use crate::Message;

/// Header holding the event's `source`.
pub const SOURCE: &str = "ce-source";
/// Header holding the event's `subject`.
pub const SUBJECT: &str = "ce-subject";
/// Header holding the event's `time` (RFC 3339).
pub const TIME: &str = "ce-time";
/// Header holding the event's `dataschema`.
pub const DATASCHEMA: &str = "ce-dataschema";
/// The `type` of a message published without one.
pub const DEFAULT_TYPE: &str = "sluice.message";
/// The context attributes with their own place in a message (not extensions).
pub const ATTRIBUTES: [&str; 11] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "partitionkey",
];

/// The event's `source`, if the message carries one.
pub fn source(message: &Message) -> Option<&str> {
    message.header(SOURCE)
}

/// The event's `subject`, if any.
pub fn subject(message: &Message) -> Option<&str> {
    message.header(SUBJECT)
}

/// The event's `time`, if it was given (as sent, RFC 3339).
pub fn time(message: &Message) -> Option<&str> {
    message.header(TIME)
}

/// Whether `name` is a valid CloudEvents attribute name: lower-case ASCII letters and
/// digits.
pub fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}
