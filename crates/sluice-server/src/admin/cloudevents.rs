//! The CloudEvents 1.0 HTTP binding on the data API: events in, in structured mode
//! (`application/cloudevents+json`, `application/cloudevents-batch+json`) or binary mode
//! (`ce-*` headers and the body as data), and deliveries out in either mode. The mapping onto
//! a Sluice message is `sluice_core::cloudevents`'s (one table, in its docs and in
//! `docs/http-api.md`).

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use base64::Engine as _;
use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use sluice_core::cloudevents::{self as ce, ATTRIBUTES};
use sluice_core::{Error, Message};

use sluice_core::envelope::format_time;

use super::messages::{is_json, json_payload, JSON};
use super::ApiError;

/// Structured mode, one event.
pub(crate) const STRUCTURED: &str = "application/cloudevents+json";
/// Structured mode, a batch of events.
pub(crate) const BATCH: &str = "application/cloudevents-batch+json";

fn invalid(reason: impl Into<String>) -> ApiError {
    ApiError::coded(StatusCode::BAD_REQUEST, "invalid_event", reason)
}

/// The attributes of an event as strings, with its data, before they become a message.
#[derive(Default)]
struct Event {
    attributes: BTreeMap<String, String>,
    data: Bytes,
}

impl Event {
    fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.attributes.get(name).map(String::as_str) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(invalid(format!("a CloudEvent needs a non-empty `{name}`"))),
        }
    }

    fn into_message(self) -> Result<Message, ApiError> {
        match self.attributes.get("specversion").map(String::as_str) {
            Some("1.0") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "CloudEvents specversion `{other}` is not supported (only 1.0)"
                )))
            }
            None => return Err(invalid("a CloudEvent needs `specversion` (1.0)")),
        }
        let mut builder = Message::builder(self.data.clone())
            .id(self.required("id")?)
            .message_type(self.required("type")?)
            .header(ce::SOURCE, self.required("source")?);
        for (name, value) in self.attributes {
            if !ce::is_attribute_name(&name) {
                return Err(invalid(format!(
                    "`{name}` is not a CloudEvents attribute name (lower-case letters and digits)"
                )));
            }
            builder = match name.as_str() {
                "specversion" | "id" | "type" | "source" => builder,
                "subject" => builder.header(ce::SUBJECT, value),
                "time" => builder.header(ce::TIME, value),
                "dataschema" => builder.header(ce::DATASCHEMA, value),
                "datacontenttype" => builder.content_type(value),
                "partitionkey" => builder.ordering_key(value),
                _ => builder.header(name, value),
            };
        }
        builder.build().map_err(|e| ApiError::from(Error::from(e)))
    }
}

/// An event in structured mode (a JSON object).
fn structured_event(fields: BTreeMap<String, &RawValue>) -> Result<Event, ApiError> {
    let mut event = Event::default();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in fields {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            _ => {
                let value = match serde_json::from_str::<serde_json::Value>(value.get()) {
                    Ok(serde_json::Value::String(s)) => s,
                    Ok(serde_json::Value::Null) => continue,
                    Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        v.to_string()
                    }
                    _ => {
                        return Err(invalid(format!(
                            "attribute `{name}` must be a string, number or boolean"
                        )))
                    }
                };
                event.attributes.insert(name, value);
            }
        }
    }
    let content_type = event.attributes.get("datacontenttype").map(String::as_str);
    event.data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(invalid("an event has `data` or `data_base64`, not both"))
        }
        (None, Some(b64)) => {
            let text: String = serde_json::from_str(b64.get())
                .map_err(|_| invalid("`data_base64` must be a string"))?;
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map(Bytes::from)
                .map_err(|e| invalid(format!("`data_base64` is not valid base64: {e}")))?
        }
        (Some(data), None) if content_type.is_some_and(|ct| !is_json(Some(ct))) => {
            // Not JSON content: a string is the data itself; anything else stays JSON text.
            match serde_json::from_str::<String>(data.get()) {
                Ok(text) => Bytes::from(text),
                Err(_) => Bytes::copy_from_slice(data.get().as_bytes()),
            }
        }
        (Some(data), None) => {
            if content_type.is_none() {
                event
                    .attributes
                    .insert("datacontenttype".into(), JSON.into());
            }
            Bytes::copy_from_slice(data.get().as_bytes())
        }
        (None, None) => Bytes::new(),
    };
    Ok(event)
}

/// One event in structured mode.
pub(crate) fn decode_structured(body: &[u8]) -> Result<Message, ApiError> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not a CloudEvent (a JSON object): {e}")))?;
    structured_event(fields)?.into_message()
}

/// A batch of events in structured mode, each decoded or refused on its own.
pub(crate) fn decode_batch(body: &[u8]) -> Result<Vec<Result<Message, ApiError>>, String> {
    let events: Vec<BTreeMap<String, &RawValue>> = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not a batch of CloudEvents (a JSON array of objects): {e}")
    })?;
    Ok(events
        .into_iter()
        .map(|fields| structured_event(fields)?.into_message())
        .collect())
}

/// Whether a request is a binary-mode event (it has `ce-specversion`).
pub(crate) fn is_binary(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-specversion")
}

/// One event in binary mode: `ce-*` headers, the body as data.
pub(crate) fn decode_binary(headers: &HeaderMap, body: Bytes) -> Result<Message, ApiError> {
    let mut event = Event {
        data: body,
        ..Event::default()
    };
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let value = value
            .to_str()
            .map_err(|_| invalid(format!("header `{name}` is not ASCII (percent-encode it)")))?;
        event
            .attributes
            .insert(attribute.to_owned(), percent_decode(value)?);
    }
    if let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        event
            .attributes
            .insert("datacontenttype".into(), ct.to_owned());
    }
    event.into_message()
}

fn percent_decode(value: &str) -> Result<String, ApiError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(format!("`{value}` has a bad percent-encoding")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("`{value}` is not UTF-8 once decoded")))
}

/// Percent-encodes what may not stand in a header value as the binding says: controls,
/// space, `"`, `%` and everything outside ASCII.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_graphic() && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The attributes of `message` as an event of `topic`, in a stable order.
fn attributes(message: &Message, topic: &str) -> Vec<(String, String)> {
    let mut out = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), message.id().as_str().to_owned()),
        (
            "type".to_owned(),
            message
                .message_type()
                .unwrap_or(ce::DEFAULT_TYPE)
                .to_owned(),
        ),
        (
            "source".to_owned(),
            ce::source(message).map_or_else(|| format!("/sluice/topics/{topic}"), str::to_owned),
        ),
    ];
    if let Some(subject) = ce::subject(message) {
        out.push(("subject".into(), subject.into()));
    }
    match (ce::time(message), message.published_at()) {
        (Some(time), _) => out.push(("time".into(), time.into())),
        (None, Some(at)) => out.push(("time".into(), format_time(at))),
        (None, None) => {}
    }
    if let Some(schema) = message.header(ce::DATASCHEMA) {
        out.push(("dataschema".into(), schema.into()));
    }
    if let Some(ct) = message.content_type() {
        out.push(("datacontenttype".into(), ct.into()));
    }
    if let Some(key) = message.ordering_key() {
        out.push(("partitionkey".into(), key.into()));
    }
    for (name, value) in message.headers() {
        if ce::is_attribute_name(name) && !ATTRIBUTES.contains(&name.as_str()) {
            out.push((name.clone(), value.clone()));
        }
    }
    out
}

/// A message as a structured-mode event (a JSON object, data kept byte for byte).
#[derive(Debug)]
pub(crate) struct StructuredEvent(Vec<(String, Box<RawValue>)>);

impl Serialize for StructuredEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn raw_string(s: &str) -> Box<RawValue> {
    serde_json::value::to_raw_value(s).expect("a string is JSON")
}

/// `message`, delivered from `topic`, as a structured-mode event.
pub(crate) fn encode_structured(message: &Message, topic: &str) -> StructuredEvent {
    let mut fields: Vec<(String, Box<RawValue>)> = attributes(message, topic)
        .into_iter()
        .map(|(k, v)| (k, raw_string(&v)))
        .collect();
    if !message.payload().is_empty() || message.content_type().is_some() {
        if let Some(json) = json_payload(message) {
            fields.push(("data".into(), json));
        } else if let Ok(text) = std::str::from_utf8(message.payload()) {
            fields.push(("data".into(), raw_string(text)));
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(message.payload());
            fields.push(("data_base64".into(), raw_string(&b64)));
        }
    }
    StructuredEvent(fields)
}

/// The headers of `message` as a binary-mode event (its body is the payload).
pub(crate) fn binary_headers(message: &Message, topic: &str) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in attributes(message, topic) {
        let name = if name == "datacontenttype" {
            axum::http::header::CONTENT_TYPE
        } else {
            match HeaderName::try_from(format!("ce-{name}")) {
                Ok(name) => name,
                Err(_) => continue,
            }
        };
        // The content type is a header of its own, never percent-encoded.
        let value = if name == axum::http::header::CONTENT_TYPE {
            value
        } else {
            percent_encode(&value)
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            out.push((name, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{
        "specversion": "1.0", "id": "A234-1234-1234", "source": "/shop/orders",
        "type": "com.example.order.placed", "subject": "order-42",
        "time": "2026-12-07T10:00:00Z", "datacontenttype": "application/json",
        "dataschema": "https://example.com/order.json", "partitionkey": "customer-7",
        "tenant": "acme", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "data": {"total": 12.50}
    }"#;

    #[test]
    fn a_structured_event_keeps_every_attribute_both_ways() {
        let m = decode_structured(EVENT.as_bytes()).unwrap();
        assert_eq!(m.id().as_str(), "A234-1234-1234");
        assert_eq!(m.message_type(), Some("com.example.order.placed"));
        assert_eq!(ce::source(&m), Some("/shop/orders"));
        assert_eq!(ce::subject(&m), Some("order-42"));
        assert_eq!(ce::time(&m), Some("2026-12-07T10:00:00Z"));
        assert_eq!(m.ordering_key(), Some("customer-7"));
        assert_eq!(m.header("tenant"), Some("acme"));
        assert!(m.header("traceparent").is_some());
        assert_eq!(m.payload().as_ref(), br#"{"total": 12.50}"#);
        let back = serde_json::to_string(&encode_structured(&m, "orders")).unwrap();
        let back: serde_json::Value = serde_json::from_str(&back).unwrap();
        let original: serde_json::Value = serde_json::from_str(EVENT).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn a_binary_event_round_trips_through_headers() {
        let m = decode_structured(EVENT.as_bytes()).unwrap();
        let mut headers = HeaderMap::new();
        for (k, v) in binary_headers(&m, "orders") {
            headers.insert(k, v);
        }
        assert!(is_binary(&headers));
        let again = decode_binary(&headers, m.payload().clone()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn header_values_are_percent_encoded_and_decoded() {
        let value = "héllo \"world\" 100%";
        let encoded = percent_encode(value);
        assert!(encoded.is_ascii() && !encoded.contains(' '), "{encoded}");
        assert_eq!(percent_decode(&encoded).unwrap(), value);
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%+5").is_err());
    }

    #[test]
    fn text_and_binary_data() {
        let m = decode_structured(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"hi"}"#,
        )
        .unwrap();
        assert_eq!(m.payload().as_ref(), b"hi");
        let m = decode_structured(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AAH/"}"#,
        )
        .unwrap();
        assert_eq!(m.payload().as_ref(), &[0, 1, 255]);
        let out = serde_json::to_value(encode_structured(&m, "t")).unwrap();
        assert_eq!(out["data_base64"], "AAH/");
    }

    proptest::proptest! {
        /// Whatever arrives as an event, in either mode, decoding answers and never panics.
        #[test]
        fn decoding_any_event_never_panics(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            name in "[a-z0-9]{0,8}",
            value in "[ -~]{0,40}",
        ) {
            let _ = decode_structured(&body);
            let _ = decode_batch(&body);
            let mut headers = HeaderMap::new();
            headers.insert("ce-specversion", HeaderValue::from_static("1.0"));
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(format!("ce-{name}")),
                HeaderValue::try_from(value.as_str()),
            ) {
                headers.insert(n, v);
            }
            let _ = decode_binary(&headers, Bytes::from(body));
            let event = serde_json::json!({
                "specversion": "1.0", "id": value, "source": value, "type": "t", name.clone(): value,
            });
            if let Ok(m) = decode_structured(&serde_json::to_vec(&event).unwrap()) {
                let _ = serde_json::to_string(&encode_structured(&m, "t")).unwrap();
                let _ = binary_headers(&m, "t");
            }
        }
    }

    #[test]
    fn invalid_events_are_refused_with_a_reason() {
        for (body, expected) in [
            (r#"{"id":"1","source":"s","type":"t"}"#, "specversion"),
            (
                r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
                "not supported",
            ),
            (r#"{"specversion":"1.0","source":"s","type":"t"}"#, "`id`"),
            (
                r#"{"specversion":"1.0","id":"1","source":"","type":"t"}"#,
                "`source`",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","Bad":"x"}"#,
                "attribute name",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","x":{}}"#,
                "string, number",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#,
                "not both",
            ),
        ] {
            let err = decode_structured(body.as_bytes()).unwrap_err();
            assert!(err.message.contains(expected), "{body}: {}", err.message);
        }
        assert!(decode_batch(b"{}").is_err());
    }
}
