//! Messages as JSON, both ways: what `POST /api/v1/topics/{topic}/messages` takes and what
//! a receive returns (`docs/http-api.md`).
//!
//! The payload is one of three fields: `payload` (any JSON value, kept byte for byte),
//! `text` (a UTF-8 string) or `base64` (any bytes). Decoding never panics and never
//! half-publishes: a body is decoded whole, each message validated as the Rust client would
//! build it, before anything is published.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_core::envelope::format_time;
use sluice_core::{Error, Message, MessageBuilder};

use super::ApiError;

/// The content type given to a `payload` (JSON) without one.
pub(crate) const JSON: &str = "application/json";
/// The content type given to a `text` payload without one.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

/// One message as published in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonMessage<'a> {
    /// The id (idempotency key); generated when absent.
    #[serde(default)]
    id: Option<String>,
    /// The event type.
    #[serde(default, rename = "type")]
    message_type: Option<String>,
    #[serde(default)]
    routing_key: Option<String>,
    #[serde(default)]
    ordering_key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    base64: Option<String>,
    /// Delivered no sooner than this many milliseconds from now.
    #[serde(default)]
    delay_ms: Option<u64>,
}

/// A publish body: `{"messages": [...]}`, or one message object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    messages: Vec<JsonMessage<'a>>,
}

/// The messages of a JSON publish body, each decoded or refused on its own (the caller
/// publishes none unless all are `Ok`).
pub(crate) fn decode_body(body: &[u8]) -> Result<Vec<Result<Message, ApiError>>, String> {
    // A top-level object with a `messages` key is a batch; any other object is one message.
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a JSON object: {e}"))?;
    let messages = if fields.contains_key("messages") {
        serde_json::from_slice::<Batch<'_>>(body)
            .map_err(|e| format!("the batch is not valid: {e}"))?
            .messages
    } else {
        vec![serde_json::from_slice::<JsonMessage<'_>>(body)
            .map_err(|e| format!("the message is not valid: {e}"))?]
    };
    Ok(messages
        .into_iter()
        .map(JsonMessage::into_message)
        .collect())
}

fn invalid(reason: impl Into<String>) -> ApiError {
    ApiError::coded(StatusCode::BAD_REQUEST, "invalid_message", reason)
}

impl JsonMessage<'_> {
    /// The message this describes, validated as `Message::builder` validates.
    pub(crate) fn into_message(self) -> Result<Message, ApiError> {
        let (payload, default_type) = match (self.payload, self.text, self.base64) {
            (Some(json), None, None) => (Bytes::copy_from_slice(json.get().as_bytes()), JSON),
            (None, Some(text), None) => (Bytes::from(text), TEXT),
            (None, None, Some(b64)) => (
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map(Bytes::from)
                    .map_err(|e| invalid(format!("`base64` is not valid base64: {e}")))?,
                "",
            ),
            (None, None, None) => {
                return Err(invalid(
                    "a message needs a payload: one of `payload` (JSON), `text` or `base64`",
                ))
            }
            _ => {
                return Err(invalid(
                    "a message has one payload: `payload`, `text` or `base64`, not several",
                ))
            }
        };
        let mut builder = Message::builder(payload);
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        Attributes {
            id: self.id,
            message_type: self.message_type,
            routing_key: self.routing_key,
            ordering_key: self.ordering_key,
            content_type: self
                .content_type
                .or_else(|| (!default_type.is_empty()).then(|| default_type.to_owned())),
            delay_ms: self.delay_ms,
        }
        .build(builder)
    }
}

/// A message's attributes besides its payload and headers, from a JSON message or from a
/// raw body's query.
#[derive(Debug, Default)]
pub(crate) struct Attributes {
    pub(crate) id: Option<String>,
    pub(crate) message_type: Option<String>,
    pub(crate) routing_key: Option<String>,
    pub(crate) ordering_key: Option<String>,
    pub(crate) content_type: Option<String>,
    /// Delivered no sooner than this many milliseconds from now (0: at once).
    pub(crate) delay_ms: Option<u64>,
}

impl Attributes {
    /// The message of `builder` with these attributes, validated as `Message::builder`
    /// validates.
    pub(crate) fn build(self, mut builder: MessageBuilder) -> Result<Message, ApiError> {
        if let Some(id) = self.id {
            builder = builder.id(id);
        }
        if let Some(t) = self.message_type {
            builder = builder.message_type(t);
        }
        if let Some(k) = self.routing_key {
            builder = builder.routing_key(k);
        }
        if let Some(k) = self.ordering_key {
            builder = builder.ordering_key(k);
        }
        if let Some(ct) = self.content_type {
            builder = builder.content_type(ct);
        }
        if let Some(ms) = self.delay_ms.filter(|ms| *ms > 0) {
            builder = builder.deliver_after(Duration::from_millis(ms));
        }
        builder.build().map_err(|e| ApiError::from(Error::from(e)))
    }
}

/// How a received payload is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Encoding {
    /// JSON content as `payload`, other UTF-8 as `text`, anything else as `base64`.
    #[default]
    Auto,
    /// Always `base64`.
    Base64,
}

/// Whether a content type is JSON (`application/json`, `application/*+json`).
pub(crate) fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == JSON || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A payload as JSON text if it is JSON content that parses.
pub(crate) fn json_payload(message: &Message) -> Option<Box<RawValue>> {
    if !is_json(message.content_type()) {
        return None;
    }
    let text = std::str::from_utf8(message.payload()).ok()?;
    serde_json::from_str::<&RawValue>(text)
        .ok()
        .map(RawValue::to_owned)
}

/// A message as a receive returns it.
#[derive(Debug, Serialize)]
pub(crate) struct OutMessage {
    id: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    message_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordering_key: Option<String>,
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    published_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

/// `message` as JSON, its payload written as `encoding` says.
pub(crate) fn encode(message: &Message, encoding: Encoding) -> OutMessage {
    let (mut payload, mut text, mut b64) = (None, None, None);
    match encoding {
        Encoding::Auto => {
            if let Some(json) = json_payload(message) {
                payload = Some(json);
            } else if let Ok(s) = std::str::from_utf8(message.payload()) {
                text = Some(s.to_owned());
            } else {
                b64 = Some(base64::engine::general_purpose::STANDARD.encode(message.payload()));
            }
        }
        Encoding::Base64 => {
            b64 = Some(base64::engine::general_purpose::STANDARD.encode(message.payload()));
        }
    }
    OutMessage {
        id: message.id().as_str().to_owned(),
        message_type: message.message_type().map(str::to_owned),
        routing_key: message.routing_key().map(str::to_owned),
        ordering_key: message.ordering_key().map(str::to_owned),
        headers: message.headers().clone(),
        content_type: message.content_type().map(str::to_owned),
        published_at: message.published_at().map(format_time),
        payload,
        text,
        base64: b64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(body: &str) -> Result<Message, ApiError> {
        let mut all = decode_body(body.as_bytes()).expect("decodes");
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    #[test]
    fn a_json_payload_is_kept_byte_for_byte() {
        let m = one(r#"{"id":"m-1","type":"order.placed","payload":{"b": 1.50, "a":[1,2]},"headers":{"tenant":"acme"},"ordering_key":"c-7","delay_ms":0}"#).unwrap();
        assert_eq!(m.payload().as_ref(), br#"{"b": 1.50, "a":[1,2]}"#);
        assert_eq!(m.content_type(), Some(JSON));
        assert_eq!(m.id().as_str(), "m-1");
        assert_eq!(m.message_type(), Some("order.placed"));
        assert_eq!(m.header("tenant"), Some("acme"));
        assert_eq!(m.ordering_key(), Some("c-7"));
        let out = serde_json::to_value(encode(&m, Encoding::Auto)).unwrap();
        assert_eq!(out["payload"]["a"][1], 2);
    }

    #[test]
    fn text_and_base64_payloads() {
        let m = one(r#"{"text":"héllo"}"#).unwrap();
        assert_eq!(m.payload().as_ref(), "héllo".as_bytes());
        assert_eq!(m.content_type(), Some(TEXT));
        let m = one(r#"{"base64":"AAEC/w==","content_type":"application/octet-stream"}"#).unwrap();
        assert_eq!(m.payload().as_ref(), &[0, 1, 2, 255]);
        let out = serde_json::to_value(encode(&m, Encoding::Auto)).unwrap();
        assert_eq!(out["base64"], "AAEC/w==");
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let cases = [
            (r#"{}"#, "needs a payload"),
            (r#"{"text":"a","base64":"AA=="}"#, "one payload"),
            (r#"{"base64":"%%%"}"#, "not valid base64"),
            (r#"{"text":"a","headers":{"sluice-x":"1"}}"#, "reserved"),
            (r#"{"text":"a","routing_key":"a.*"}"#, "wildcards"),
            (r#"{"text":"a","delay_ms":99999999999999999}"#, "delay"),
        ];
        for (body, expected) in cases {
            let err = one(body).unwrap_err().message;
            assert!(err.contains(expected), "{body}: {err}");
        }
        // A key written with an escape is the same key.
        assert!(one(r#"{"te\u0078t":"a"}"#).is_ok());
        for body in [
            r#"[1]"#,
            r#"{"text":"a","color":"red"}"#,
            r#"{"messages":{}}"#,
            "nope",
        ] {
            assert!(decode_body(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn a_batch_is_decoded_message_by_message() {
        let all = decode_body(br#"{"messages":[{"text":"a"},{"headers":{"sluice-x":"1"},"text":"b"},{"payload":null}]}"#).unwrap();
        assert_eq!(all.len(), 3);
        assert!(all[0].is_ok() && all[1].is_err() && all[2].is_err());
    }

    proptest! {
        /// Whatever arrives, decoding answers (no panic), and every message it accepts is a
        /// valid message that encodes back with the same payload.
        #[test]
        fn decoding_any_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(all) = decode_body(&body) {
                for m in all.into_iter().flatten() {
                    let _ = encode(&m, Encoding::Base64);
                }
            }
        }

        #[test]
        fn decoding_json_shaped_bodies_never_panics(
            id in proptest::option::of("[ -~]{0,300}"),
            key in proptest::option::of("\\PC{0,300}"),
            header in "[ -~]{0,140}",
            text in "\\PC{0,64}",
            delay in any::<u64>(),
            b64 in "[A-Za-z0-9+/=%]{0,40}",
        ) {
            let body = serde_json::json!({
                "messages": [
                    {"id": id, "ordering_key": key, "headers": {header.clone(): text.clone()}, "text": text, "delay_ms": delay},
                    {"base64": b64, "routing_key": key},
                ]
            });
            let bytes = serde_json::to_vec(&body).unwrap();
            let all = decode_body(&bytes).unwrap();
            prop_assert_eq!(all.len(), 2);
            for m in all.into_iter().flatten() {
                let out = serde_json::to_vec(&encode(&m, Encoding::Auto)).unwrap();
                prop_assert!(!out.is_empty());
            }
        }
    }
}
