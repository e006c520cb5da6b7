//! An AsyncAPI 3.0 document of a topology, so that teams in other languages can read what a
//! service publishes and consumes, and generate their clients from it.
//!
//! One channel per topic (its address is the topic's name), a `send` operation per topic and
//! a `receive` operation per subscription (its filter, attempts and lease in its
//! description and in `x-sluice-*` fields), a channel per dead-letter queue with the DLQ
//! envelope's headers, and the message of each channel: Sluice's message with its reserved
//! headers, plus one message per typed event whose payload schema is known
//! ([`AsyncApi::message`], or [`AsyncApi::event`] with the `schemars` feature).
//!
//! `sluice serve` answers `GET /api/v1/asyncapi.json` with the document of its topology, and
//! `sluice asyncapi --url URL` prints it for any backend. A Rust service adds its typed
//! events' schemas:
//!
//! ```no_run
//! # async fn demo(backend: impl sluice_core::Backend) -> sluice_core::Result<()> {
//! use sluice_runtime::asyncapi::AsyncApi;
//!
//! let orders = sluice_core::TopicName::new("orders")?;
//! let doc = AsyncApi::from_backend(&backend)
//!     .await?
//!     .title("Shop events")
//!     .message(&orders, "order.placed", serde_json::json!({
//!         "type": "object",
//!         "properties": { "order": { "type": "integer" } },
//!         "required": ["order"],
//!     }));
//! println!("{}", serde_json::to_string_pretty(&doc.to_json()).unwrap());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sluice_core::config::StartPosition;
use sluice_core::ops::{SubscriptionInfo, TopicInfo};
use sluice_core::{envelope, Backend, TopicName};

/// A topology's AsyncAPI document, built up and then written with
/// [`to_json`](Self::to_json).
#[derive(Debug, Clone)]
pub struct AsyncApi {
    title: String,
    description: Option<String>,
    servers: Vec<(String, Value)>,
    topics: Vec<TopicInfo>,
    subscriptions: Vec<SubscriptionInfo>,
    /// Payload schemas by topic, then message type.
    schemas: BTreeMap<String, BTreeMap<String, Value>>,
    /// Topics shown without a `send` operation (the reader may not publish to them).
    no_send: Vec<TopicName>,
}

impl AsyncApi {
    /// The document of these topics and subscriptions.
    pub fn new(topics: Vec<TopicInfo>, subscriptions: Vec<SubscriptionInfo>) -> Self {
        Self {
            title: "Sluice topology".into(),
            description: None,
            servers: Vec::new(),
            topics,
            subscriptions,
            schemas: BTreeMap::new(),
            no_send: Vec::new(),
        }
    }

    /// The document of every topic and subscription `backend` has.
    pub async fn from_backend<B: Backend>(backend: &B) -> sluice_core::Result<Self> {
        let topics = backend.list_topics().await?;
        let mut subscriptions = Vec::new();
        for topic in &topics {
            for name in &topic.subscriptions {
                match backend.describe_subscription(name).await {
                    Ok(info) => subscriptions.push(info),
                    // Deleted since the listing: not part of the topology any more.
                    Err(sluice_core::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Self::new(topics, subscriptions))
    }

    /// Keeps only the topics and subscriptions these say yes to (what a reader may see),
    /// and the topics the kept subscriptions read (each operation's channel is there).
    #[must_use]
    pub fn retain(
        mut self,
        topic: impl Fn(&TopicName) -> bool,
        subscription: impl Fn(&sluice_core::SubscriptionName) -> bool,
    ) -> Self {
        self.subscriptions.retain(|s| subscription(&s.name));
        let read: Vec<TopicName> = self
            .subscriptions
            .iter()
            .map(|s| s.config.topic.clone())
            .collect();
        self.topics
            .retain(|t| topic(&t.name) || read.contains(&t.name));
        for t in &mut self.topics {
            t.subscriptions.retain(&subscription);
        }
        self
    }

    /// Leaves out the `send` operation of every topic this says no to (a reader who may
    /// consume from it but not publish).
    #[must_use]
    pub fn send_only_to(mut self, topic: impl Fn(&TopicName) -> bool) -> Self {
        self.no_send = self
            .topics
            .iter()
            .map(|t| t.name.clone())
            .filter(|t| !topic(t))
            .collect();
        self
    }

    /// Sets the document's title.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the document's description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds a server: `host` (`127.0.0.1:7576`) speaking `protocol` (`http`, `amqp`,
    /// `kafka`, `sqs`, `sluice`).
    #[must_use]
    pub fn server(
        mut self,
        name: impl Into<String>,
        host: impl Into<String>,
        protocol: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.servers.push((
            name.into(),
            json!({
                "host": host.into(),
                "protocol": protocol.into(),
                "description": description.into(),
            }),
        ));
        self
    }

    /// Declares that messages of `message_type` on `topic` carry a payload with this JSON
    /// Schema.
    #[must_use]
    pub fn message(mut self, topic: &TopicName, message_type: &str, schema: Value) -> Self {
        self.schemas
            .entry(topic.as_str().to_owned())
            .or_default()
            .insert(message_type.to_owned(), schema);
        self
    }

    /// Declares the typed event `E` on `topic`, its payload schema derived by `schemars`.
    #[cfg(feature = "schemars")]
    #[must_use]
    pub fn event<E: crate::events::Event + schemars::JsonSchema>(self, topic: &TopicName) -> Self {
        let schema = serde_json::to_value(schemars::schema_for!(E)).unwrap_or(Value::Null);
        self.message(topic, E::TYPE, schema)
    }

    /// The document.
    pub fn to_json(&self) -> Value {
        let mut channels = Map::new();
        let mut operations = Map::new();
        let mut messages = Map::new();
        messages.insert("SluiceMessage".into(), sluice_message());
        messages.insert("DeadLettered".into(), dead_lettered());
        for topic in &self.topics {
            let name = topic.name.as_str();
            let id = key(name);
            let mut refs = Map::new();
            refs.insert(
                "SluiceMessage".into(),
                json!({"$ref": "#/components/messages/SluiceMessage"}),
            );
            for (message_type, schema) in self.schemas.get(name).into_iter().flatten() {
                let message_id = format!("{id}.{}", key(message_type));
                messages.insert(message_id.clone(), typed(message_type, schema));
                refs.insert(
                    key(message_type),
                    json!({"$ref": format!("#/components/messages/{message_id}")}),
                );
            }
            channels.insert(
                id.clone(),
                json!({
                    "address": name,
                    "title": format!("Topic {name}"),
                    "description": topic_description(topic),
                    "messages": refs,
                    "x-sluice-topic": {
                        "ordered": topic.config.ordered,
                        "dedup_window_ms": topic.config.dedup_window.map(|d| d.as_millis() as u64),
                    },
                }),
            );
            if self.no_send.contains(&topic.name) {
                continue;
            }
            operations.insert(
                format!("send.{id}"),
                json!({
                    "action": "send",
                    "channel": {"$ref": format!("#/channels/{id}")},
                    "summary": format!("Publish to topic {name}"),
                }),
            );
        }
        for sub in &self.subscriptions {
            let name = sub.name.as_str();
            let topic = key(sub.config.topic.as_str());
            let filter = sub.config.filter.as_ref().map(|f| f.as_str().to_owned());
            operations.insert(
                format!("receive.{}", key(name)),
                json!({
                    "action": "receive",
                    "channel": {"$ref": format!("#/channels/{topic}")},
                    "summary": format!("Subscription {name}"),
                    "description": subscription_description(sub),
                    "x-sluice-subscription": {
                        "name": name,
                        "filter": filter,
                        "start": match sub.config.start {
                            StartPosition::Earliest => "earliest",
                            _ => "latest",
                        },
                        "lease_ms": sub.config.lease.as_millis() as u64,
                        "max_attempts": sub.config.max_attempts,
                        "dead_letter_queue": sub.config.dead_letter_queue,
                    },
                }),
            );
            if sub.config.dead_letter_queue {
                let dlq = format!("{}.dlq", key(name));
                channels.insert(
                    dlq.clone(),
                    json!({
                        "address": format!("{name} (dead-letter queue)"),
                        "title": format!("Dead-letter queue of {name}"),
                        "description": "Messages the subscription gave up on, each with the DLQ envelope's headers. Read, redriven and purged with the DLQ tools (`sluice dlq`, `/api/v1/subscriptions/{subscription}/dlq`).",
                        "messages": {"DeadLettered": {"$ref": "#/components/messages/DeadLettered"}},
                    }),
                );
            }
        }
        let mut info = json!({
            "title": self.title,
            "version": "1",
        });
        if let Some(d) = &self.description {
            info["description"] = json!(d);
        }
        let mut doc = json!({
            "asyncapi": "3.0.0",
            "info": info,
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": {"messages": messages},
        });
        if !self.servers.is_empty() {
            doc["servers"] = Value::Object(self.servers.iter().cloned().collect());
        }
        doc
    }
}

/// An identifier AsyncAPI accepts as a key: letters, digits, `.`, `-`, `_`.
fn key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn topic_description(topic: &TopicInfo) -> String {
    let mut parts = vec![format!("Topic `{}`", topic.name)];
    if topic.config.ordered {
        parts.push("strictly ordered".into());
    }
    if let Some(window) = topic.config.dedup_window {
        parts.push(format!(
            "duplicates by message id dropped within {} ms",
            window.as_millis()
        ));
    }
    if let Some(bound) = &topic.config.backlog_bound {
        if let Some(n) = bound.max_messages {
            parts.push(format!("backlog bounded at {n} messages"));
        }
        if let Some(n) = bound.max_bytes {
            parts.push(format!("backlog bounded at {n} bytes"));
        }
    }
    if !topic.subscriptions.is_empty() {
        let subs: Vec<&str> = topic.subscriptions.iter().map(|s| s.as_str()).collect();
        parts.push(format!("subscriptions: {}", subs.join(", ")));
    }
    parts.join("; ") + "."
}

fn subscription_description(sub: &SubscriptionInfo) -> String {
    let c = &sub.config;
    let filter = c.filter.as_ref().map_or_else(
        || "every message".to_owned(),
        |f| format!("messages whose routing key matches `{}`", f.as_str()),
    );
    format!(
        "Receives {filter} of topic `{}`; each delivery is leased for {} ms and tried at most {} times{}.",
        c.topic,
        c.lease.as_millis(),
        c.max_attempts,
        if c.dead_letter_queue {
            ", then dead-lettered"
        } else {
            ", then dropped"
        }
    )
}

/// The headers every message may carry: user headers (strings) and the reserved ones.
fn headers(extra: &[(&str, &str)]) -> Value {
    let mut properties = Map::new();
    for (name, description) in [
        ("traceparent", "W3C trace context of the producer's span"),
        ("tracestate", "W3C trace state"),
        ("ce-source", "CloudEvents `source`"),
        ("ce-subject", "CloudEvents `subject`"),
        ("ce-time", "CloudEvents `time` (RFC 3339)"),
        ("ce-dataschema", "CloudEvents `dataschema`"),
        (
            envelope::FIRST_FAILURE_HEADER,
            "When the first attempt failed (RFC 3339), kept across retries",
        ),
    ]
    .iter()
    .chain(extra)
    {
        properties.insert(
            (*name).into(),
            json!({"type": "string", "description": description}),
        );
    }
    json!({
        "type": "object",
        "description": "Headers: a string map. Names starting with `sluice-` are reserved for Sluice.",
        "properties": properties,
        "additionalProperties": {"type": "string"},
    })
}

fn sluice_message() -> Value {
    json!({
        "name": "SluiceMessage",
        "title": "A Sluice message",
        "summary": "Any message of the topic: an id (the idempotency key), an optional type, routing key and ordering key, headers, a content type and a payload of bytes.",
        "headers": headers(&[]),
        "payload": {
            "description": "The payload, in the message's content type (JSON when `application/json`)."
        },
        "correlationId": {"location": "$message.header#/traceparent"},
    })
}

fn dead_lettered() -> Value {
    json!({
        "name": "DeadLettered",
        "title": "A dead-lettered message",
        "summary": "The original message with the DLQ envelope's reserved headers.",
        "headers": headers(&[
            (envelope::TOPIC, "The topic it was published to"),
            (envelope::SUBSCRIPTION, "The subscription that dead-lettered it"),
            (envelope::ATTEMPTS, "Attempts made"),
            (envelope::REASON, "Why it was dead-lettered"),
            (envelope::LAST_ERROR, "The last error a handler returned"),
            (envelope::FIRST_FAILURE_AT, "When the first attempt failed (RFC 3339)"),
            (envelope::DEAD_LETTERED_AT, "When it was dead-lettered (RFC 3339)"),
        ]),
        "payload": {"description": "The original payload, unchanged."},
    })
}

fn typed(message_type: &str, schema: &Value) -> Value {
    json!({
        "name": message_type,
        "title": format!("Event {message_type}"),
        "summary": format!("A message whose type is `{message_type}`."),
        "contentType": "application/json",
        "headers": headers(&[]),
        "payload": schema,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_core::{Filter, SubscriptionConfig, SubscriptionName, TopicConfig};

    use super::*;

    #[test]
    fn the_document_has_a_channel_per_topic_and_an_operation_per_subscription() {
        let orders = TopicName::new("orders").unwrap();
        let mut config = TopicConfig::default();
        config.dedup_window = Some(Duration::from_secs(60));
        let billing = SubscriptionName::new("billing").unwrap();
        let topics = vec![TopicInfo::new(
            orders.clone(),
            config,
            vec![billing.clone()],
        )];
        let subs = vec![SubscriptionInfo::new(
            billing,
            SubscriptionConfig::new(orders.clone()).filter(Filter::new("order.*").unwrap()),
        )];
        let doc = AsyncApi::new(topics, subs)
            .message(&orders, "order.placed", json!({"type": "object"}))
            .server("local", "127.0.0.1:7576", "http", "sluice serve")
            .to_json();
        assert_eq!(doc["asyncapi"], "3.0.0");
        assert_eq!(doc["channels"]["orders"]["address"], "orders");
        assert_eq!(
            doc["channels"]["orders"]["x-sluice-topic"]["dedup_window_ms"],
            60000
        );
        assert_eq!(doc["operations"]["send.orders"]["action"], "send");
        let receive = &doc["operations"]["receive.billing"];
        assert_eq!(receive["action"], "receive");
        assert_eq!(receive["channel"]["$ref"], "#/channels/orders");
        assert_eq!(receive["x-sluice-subscription"]["filter"], "order.*");
        assert!(doc["channels"]["billing.dlq"].is_object());
        let typed = &doc["components"]["messages"]["orders.order.placed"];
        assert_eq!(typed["payload"]["type"], "object");
        assert_eq!(
            doc["channels"]["orders"]["messages"]["order.placed"]["$ref"],
            "#/components/messages/orders.order.placed"
        );
        assert!(
            doc["components"]["messages"]["DeadLettered"]["headers"]["properties"]
                [envelope::REASON]
                .is_object()
        );
        assert_eq!(doc["servers"]["local"]["protocol"], "http");
    }
}
