//! The HTTP data API's topology and publish routes (`docs/http-api.md`): what a service in
//! any language needs to create topics and subscriptions and to publish (JSON, raw bodies,
//! CloudEvents) with its standard HTTP client. Receiving and settling are in `consume.rs`,
//! the leases in `leases.rs`.
//!
//! A publish is answered only once its messages are durable, and a body is decoded and
//! validated whole before anything is published: one invalid message and none is.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sluice_core::config::{BacklogBound, Overflow, StartPosition};
use sluice_core::{
    Backend, Error, Filter, Message, PublishOutcome, Publisher, SubscriptionConfig, TopicConfig,
};

use super::cloudevents;
use super::messages;
use super::{render, subscription_name, topic_name, ApiError, ApiResult, View};
use crate::auth::{grant_name, Action, Grants};
use crate::Shared;

/// The body of a request, or the refusal of one over the server's body limit.
pub(crate) fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::coded(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over this server's limit: {e}"),
            )
        } else {
            ApiError::bad_body(e.to_string())
        }
    })
}

/// A JSON body, where an empty body is the default.
pub(crate) fn json_or_default<T: Default + for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_body(format!("the body is not valid: {e}")))
}

pub(crate) fn check(
    grants: &Grants,
    action: Action,
    what: &str,
    name: &str,
) -> Result<(), ApiError> {
    grants.check(action, what, name).map_err(ApiError::from)
}

// ---- topology ----------------------------------------------------------------------------

/// Body of `PUT /api/v1/topics/{topic}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TopicBody {
    ordered: bool,
    dedup_window_ms: Option<u64>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    /// With a bound: wait up to this long for room instead of refusing at once.
    block_ms: Option<u64>,
}

pub(crate) async fn ensure_topic(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(view): Query<View>,
    Path(topic): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> ApiResult<render::Topic> {
    let backend = view.backend(&shared)?;
    let topic = topic_name(&topic)?;
    grants.check_manage(
        &[Action::Publish],
        "create topic",
        &grant_name(backend.naming(), topic.as_str()),
    )?;
    let body: TopicBody = json_or_default(&body(request)?)?;
    let mut config = TopicConfig::default();
    config.ordered = body.ordered;
    config.dedup_window = body.dedup_window_ms.map(Duration::from_millis);
    if body.block_ms.is_some() && body.max_messages.is_none() && body.max_bytes.is_none() {
        return Err(ApiError::bad_body(
            "`block_ms` needs a bound: `max_messages` or `max_bytes`",
        ));
    }
    if body.max_messages.is_some() || body.max_bytes.is_some() {
        let overflow = match body.block_ms {
            Some(ms) => Overflow::Block {
                timeout: Duration::from_millis(ms),
            },
            None => Overflow::Reject,
        };
        let mut bound = BacklogBound::new(overflow);
        bound.max_messages = body.max_messages;
        bound.max_bytes = body.max_bytes;
        config.backlog_bound = Some(bound);
    }
    backend.ensure_topic(&topic, &config).await?;
    Ok(Json(render::topic(&backend.describe_topic(&topic).await?)))
}

/// Body of `PUT /api/v1/subscriptions/{subscription}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SubscriptionBody {
    topic: String,
    filter: Option<String>,
    /// `latest` (default) or `earliest`.
    start: Option<String>,
    lease_ms: Option<u64>,
    max_attempts: Option<u32>,
    dead_letter_queue: Option<bool>,
    prefetch: Option<u32>,
}

pub(crate) async fn ensure_subscription(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(view): Query<View>,
    Path(subscription): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> ApiResult<render::Subscription> {
    let backend = view.backend(&shared)?;
    let name = subscription_name(&subscription)?;
    let body: SubscriptionBody = json_or_default(&body(request)?)?;
    if body.topic.is_empty() {
        return Err(ApiError::bad_body("a subscription needs its `topic`"));
    }
    let topic = topic_name(&body.topic)?;
    grants.check_manage(
        &[Action::Consume],
        "create subscription",
        &grant_name(backend.naming(), name.as_str()),
    )?;
    grants.check_manage(
        &[Action::Consume],
        "subscribe to topic",
        &grant_name(backend.naming(), topic.as_str()),
    )?;
    let mut config = SubscriptionConfig::new(topic);
    if let Some(filter) = &body.filter {
        config.filter = Some(Filter::new(filter)?);
    }
    config.start = match body.start.as_deref() {
        None | Some("latest") => StartPosition::Latest,
        Some("earliest") => StartPosition::Earliest,
        Some(other) => {
            return Err(ApiError::bad_body(format!(
                "`start` is `latest` or `earliest`, not `{other}`"
            )))
        }
    };
    for (field, value) in [
        ("lease_ms", body.lease_ms),
        ("max_attempts", body.max_attempts.map(u64::from)),
        ("prefetch", body.prefetch.map(u64::from)),
    ] {
        if value == Some(0) {
            return Err(ApiError::bad_body(format!("`{field}` must be at least 1")));
        }
    }
    if body.lease_ms.map(Duration::from_millis) > Some(crate::MAX_LEASE) {
        return Err(ApiError::bad_body(format!(
            "`lease_ms` is at most {} (12 hours)",
            crate::MAX_LEASE.as_millis()
        )));
    }
    if let Some(ms) = body.lease_ms {
        config.lease = Duration::from_millis(ms);
    }
    if let Some(n) = body.max_attempts {
        config.max_attempts = n;
    }
    if let Some(dlq) = body.dead_letter_queue {
        config.dead_letter_queue = dlq;
    }
    config.prefetch = match body.prefetch {
        Some(n) => n,
        // Not given: an existing subscription keeps its prefetch (which a PUT would
        // otherwise reset, as prefetch changes are updates, not conflicts).
        None => match backend.describe_subscription(&name).await {
            Ok(info) => info.config.prefetch,
            Err(_) => config.prefetch,
        },
    };
    backend.ensure_subscription(&name, &config).await?;
    let info = backend.describe_subscription(&name).await?;
    let stats = shared.prefetched.stats(&backend, &name).await?;
    Ok(Json(render::subscription(&info, &stats)))
}

pub(crate) async fn describe_topic(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(view): Query<View>,
    Path(topic): Path<String>,
) -> ApiResult<render::Topic> {
    let backend = view.backend(&shared)?;
    let topic = topic_name(&topic)?;
    grants.check_manage(
        &[Action::Publish, Action::Consume],
        "describe topic",
        &grant_name(backend.naming(), topic.as_str()),
    )?;
    Ok(Json(render::topic(&backend.describe_topic(&topic).await?)))
}

pub(crate) async fn describe_subscription(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(view): Query<View>,
    Path(subscription): Path<String>,
) -> ApiResult<render::Subscription> {
    let backend = view.backend(&shared)?;
    let name = subscription_name(&subscription)?;
    grants.check_manage(
        &[Action::Consume],
        "describe subscription",
        &grant_name(backend.naming(), name.as_str()),
    )?;
    let info = backend.describe_subscription(&name).await?;
    let stats = shared.prefetched.stats(&backend, &name).await?;
    Ok(Json(render::subscription(&info, &stats)))
}

// ---- publish -------------------------------------------------------------------------------

/// `?` of a publish: the attributes of a raw body (and common to CloudEvents).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PublishQuery {
    namespace: Option<String>,
    id: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<String>,
    routing_key: Option<String>,
    ordering_key: Option<String>,
    delay_ms: Option<u64>,
}

/// One message's outcome.
#[derive(Debug, Serialize)]
struct Outcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    id: Option<String>,
    /// `published`, `duplicate` (the dedup window dropped it) or `failed`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

fn essence(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The messages of a publish request, before any is published.
fn decode_publish(
    query: &PublishQuery,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Vec<Result<Message, ApiError>>, ApiError> {
    let ct = content_type(headers);
    let raw_body = !cloudevents::is_binary(headers)
        && ![messages::JSON, cloudevents::STRUCTURED, cloudevents::BATCH]
            .contains(&essence(ct).as_str());
    if !raw_body && (query.id.is_some() || query.message_type.is_some() || query.delay_ms.is_some())
    {
        return Err(ApiError::coded(
            StatusCode::BAD_REQUEST,
            "invalid",
            "`id`, `type` and `delay_ms` in the query are for raw bodies: a JSON message or a CloudEvent carries its own",
        ));
    }
    // The query's keys, checked as a message's own would be.
    messages::Attributes {
        routing_key: query.routing_key.clone(),
        ordering_key: query.ordering_key.clone(),
        ..Default::default()
    }
    .build(Message::builder(Bytes::new()))?;
    let messages = if cloudevents::is_binary(headers) {
        vec![cloudevents::decode_binary(headers, body)]
    } else {
        match essence(ct).as_str() {
            messages::JSON => messages::decode_body(&body).map_err(ApiError::bad_body)?,
            cloudevents::STRUCTURED => vec![cloudevents::decode_structured(&body)],
            cloudevents::BATCH => cloudevents::decode_batch(&body).map_err(ApiError::bad_body)?,
            _ => vec![raw(query, ct, body)],
        }
    };
    if query.routing_key.is_none() && query.ordering_key.is_none() {
        return Ok(messages);
    }
    // The query's keys apply to JSON and CloudEvents too (a raw body took them already),
    // where a message has none of its own.
    Ok(messages
        .into_iter()
        .map(|m| {
            m.map(|m| {
                let mut parts = m.into_parts();
                if parts.routing_key.is_none() {
                    parts.routing_key.clone_from(&query.routing_key);
                }
                if parts.ordering_key.is_none() {
                    parts.ordering_key.clone_from(&query.ordering_key);
                }
                Message::from_parts(parts)
            })
        })
        .collect())
}

/// A raw body: the payload as sent, its attributes in the query.
fn raw(query: &PublishQuery, content_type: Option<&str>, body: Bytes) -> Result<Message, ApiError> {
    messages::Attributes {
        id: query.id.clone(),
        message_type: query.message_type.clone(),
        routing_key: query.routing_key.clone(),
        ordering_key: query.ordering_key.clone(),
        content_type: content_type.map(str::to_owned),
        delay_ms: query.delay_ms,
    }
    .build(Message::builder(body))
}

pub(crate) async fn publish(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(query): Query<PublishQuery>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let backend = View {
        namespace: query.namespace.clone(),
    }
    .backend(&shared)?;
    let topic = topic_name(&topic)?;
    let physical = backend.naming().topic(&topic);
    check(
        &grants,
        Action::Publish,
        "publish to topic",
        &grant_name(backend.naming(), topic.as_str()),
    )?;
    let body = body(request)?;
    let decoded = decode_publish(&query, &headers, body)?;
    let caps = backend.capabilities();
    if decoded.is_empty() {
        return Err(ApiError::bad_body("the batch holds no message"));
    }
    if decoded.len() > caps.max_batch {
        return Err(ApiError::coded(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "a batch holds at most {} messages, this one {}",
                caps.max_batch,
                decoded.len()
            ),
        ));
    }
    // All or nothing: one invalid message and none is published.
    let mut valid = Vec::with_capacity(decoded.len());
    let mut refused = Vec::new();
    for (index, message) in decoded.into_iter().enumerate() {
        match message.and_then(|m| {
            m.check_size(caps.max_message_size)
                .map_err(|e| ApiError::from(Error::from(e)))?;
            Ok(m)
        }) {
            Ok(m) => valid.push(m),
            Err(e) => refused.push(Outcome {
                index: Some(index),
                id: None,
                status: "failed",
                code: Some(e.code),
                error: Some(e.message),
            }),
        }
    }
    if !refused.is_empty() {
        let first = refused[0].code.unwrap_or("invalid_message");
        let status = if first == "message_too_large" {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        let error = format!(
            "{} of the messages are not valid, so none was published: {}",
            refused.len(),
            refused[0].error.as_deref().unwrap_or("")
        );
        return Ok((
            status,
            Json(serde_json::json!({"error": error, "code": first, "results": refused})),
        )
            .into_response());
    }
    let publisher = backend.publisher().await?;
    let receipts = publisher.publish_batch(&topic, valid).await;
    let mut first_failure: Option<ApiError> = None;
    let mut fresh = 0;
    let results: Vec<Outcome> = receipts
        .into_iter()
        .map(|r| match r {
            Ok(receipt) => {
                let duplicate = receipt.outcome != PublishOutcome::Published;
                fresh += usize::from(!duplicate);
                Outcome {
                    index: None,
                    id: Some(receipt.id.as_str().to_owned()),
                    status: if duplicate { "duplicate" } else { "published" },
                    code: None,
                    error: None,
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                let outcome = Outcome {
                    index: None,
                    id: None,
                    status: "failed",
                    code: Some(e.code),
                    error: Some(e.message.clone()),
                };
                first_failure.get_or_insert(e);
                outcome
            }
        })
        .collect();
    shared.metrics.published(&physical, fresh as u64);
    Ok(match first_failure {
        None => Json(serde_json::json!({ "results": results })).into_response(),
        Some(e) => (
            e.status,
            Json(serde_json::json!({"error": e.message, "code": e.code, "results": results})),
        )
            .into_response(),
    })
}
