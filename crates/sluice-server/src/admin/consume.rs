//! Receiving and settling over HTTP (`docs/http-api.md`): deliveries leased to a client with
//! a lease token, written as Sluice's message JSON or as CloudEvents, and verbs applied by
//! token. An unsettled lease runs out exactly as for a `sluice://` consumer that stops
//! answering: the engine delivers the message again.
//!
//! HTTP clients have no runtime of their own, so the server keeps the runtime's first
//! promise for them: a delivery past its subscription's `max_attempts` is dead-lettered
//! (with the reason) instead of handed out, so a message that crashes its consumer cannot
//! loop forever.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sluice_core::{Backend, DeadLetterReason, Delivery, Error, Subscriber, SubscriptionName};
use sluice_embedded::{EmbeddedBackend, EmbeddedDelivery};

use super::cloudevents;
use super::data::{body, check, json_or_default};
use super::leases::lease_lost;
use super::messages::{self, Encoding};
use super::{subscription_name, ApiError, ApiResult, View};
use crate::auth::{grant_name, Action, Grants};
use crate::Shared;

/// Longest a receive waits for messages (a client wanting longer asks again).
const MAX_WAIT: Duration = Duration::from_secs(30);

/// How deliveries are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Format {
    /// Sluice's message JSON.
    #[default]
    Sluice,
    /// Each message as a structured-mode CloudEvent.
    Cloudevents,
    /// One delivery in CloudEvents binary mode: `ce-*` headers and the data as the body.
    CloudeventsBinary,
}

/// Body of a receive.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ReceiveBody {
    max: usize,
    wait_ms: u64,
    format: Format,
    encoding: Encoding,
}

impl Default for ReceiveBody {
    fn default() -> Self {
        Self {
            max: 1,
            wait_ms: 0,
            format: Format::Sluice,
            encoding: Encoding::Auto,
        }
    }
}

#[derive(Debug, Serialize)]
struct OutDelivery {
    lease: String,
    attempt: u32,
    /// Lease left when sent.
    lease_ms: u64,
    deadline: String,
    topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<messages::OutMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<cloudevents::StructuredEvent>,
}

pub(crate) async fn receive(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(view): Query<View>,
    Path(subscription): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (backend, name, physical) = consumable(
        &shared,
        &view,
        &grants,
        &subscription,
        "consume from subscription",
    )?;
    let body: ReceiveBody = json_or_default(&body(request)?)?;
    let max = if body.format == Format::CloudeventsBinary {
        1
    } else {
        body.max.clamp(1, backend.capabilities().max_batch)
    };
    let wait = Duration::from_millis(body.wait_ms).min(MAX_WAIT);
    let leases = &shared.http_leases;
    let subscriber = leases.subscriber(&backend, &physical, &name).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let max_attempts = subscriber.config().max_attempts;
    let leased = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let leased = match subscriber.receive(max, left).await {
            Ok(leased) => leased,
            Err(e) => {
                // Deleted (or closed) since: the next receive subscribes afresh.
                leases.forget_subscriber(&physical);
                return Err(e.into());
            }
        };
        let (give, spent): (Vec<_>, Vec<_>) = leased
            .into_iter()
            .partition(|d| d.attempt() <= max_attempts);
        if !spent.is_empty() {
            dead_letter_spent(&shared, &physical, spent, max_attempts).await;
        }
        if !give.is_empty() || tokio::time::Instant::now() >= deadline {
            break give;
        }
    };
    let now = Instant::now();
    let wall = SystemTime::now();
    if body.format == Format::CloudeventsBinary {
        let mut shown = leases.hold(&physical, leased, |token, delivery| {
            binary(token, delivery, now)
        });
        return Ok(shown
            .pop()
            .unwrap_or_else(|| StatusCode::NO_CONTENT.into_response()));
    }
    let deliveries = leases.hold(&physical, leased, |lease, delivery| {
        let left = delivery.lease_deadline().saturating_duration_since(now);
        let (message, event) = match body.format {
            Format::Sluice => (
                Some(messages::encode(delivery.message(), body.encoding)),
                None,
            ),
            _ => (
                None,
                Some(cloudevents::encode_structured(
                    delivery.message(),
                    delivery.topic().as_str(),
                )),
            ),
        };
        OutDelivery {
            lease,
            attempt: delivery.attempt(),
            lease_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            deadline: sluice_core::envelope::format_time(wall + left),
            topic: delivery.topic().as_str().to_owned(),
            message,
            event,
        }
    });
    // Typed, not a `serde_json::Value`: a JSON payload goes out byte for byte.
    Ok(Json(Deliveries { deliveries }).into_response())
}

#[derive(Serialize)]
struct Deliveries {
    deliveries: Vec<OutDelivery>,
}

/// The subscription a route names, if the token may consume from it: the view's backend,
/// the name and the full name.
fn consumable(
    shared: &Shared,
    view: &View,
    grants: &Grants,
    subscription: &str,
    what: &str,
) -> Result<(EmbeddedBackend, SubscriptionName, String), ApiError> {
    let backend = view.backend(shared)?;
    let name = subscription_name(subscription)?;
    let physical = backend.naming().subscription(&name);
    check(
        grants,
        Action::Consume,
        what,
        &grant_name(backend.naming(), name.as_str()),
    )?;
    Ok((backend, name, physical))
}

/// Dead-letters deliveries past their subscription's attempts, as the runtime's first stage
/// does for a Rust worker.
async fn dead_letter_spent(
    shared: &Shared,
    physical: &str,
    spent: Vec<EmbeddedDelivery>,
    max_attempts: u32,
) {
    let verbs = spent.into_iter().map(|d| async move {
        let attempt = d.attempt();
        let id = d.message().id().as_str().to_owned();
        let reason = DeadLetterReason::new(format!(
            "max attempts exceeded (delivered {attempt} times, limit {max_attempts})"
        ))
        .with_last_error(
            "every attempt over HTTP ended in a retry or a lease that ran out without a verb",
        );
        (id, d.dead_letter(reason).await)
    });
    for (id, result) in futures::future::join_all(verbs).await {
        match result {
            Ok(()) => {
                shared.metrics.settled(physical, "dead_letter");
                tracing::warn!(subscription = physical, id, "dead-lettered a message past its attempts (its HTTP consumers never settled it)");
            }
            // Lost meanwhile: it comes back, and is dead-lettered then.
            Err(failed) => {
                tracing::debug!(subscription = physical, id, error = %failed.error, "dead-lettering a spent delivery failed")
            }
        }
    }
}

/// One delivery in CloudEvents binary mode, its lease in `sluice-*` headers.
fn binary(token: String, delivery: &EmbeddedDelivery, now: Instant) -> Response {
    let left = delivery.lease_deadline().saturating_duration_since(now);
    let mut response = delivery.message().payload().clone().into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    for (k, v) in cloudevents::binary_headers(delivery.message(), delivery.topic().as_str()) {
        headers.insert(k, v);
    }
    let sluice = [
        ("sluice-lease", token),
        ("sluice-attempt", delivery.attempt().to_string()),
        ("sluice-lease-ms", left.as_millis().to_string()),
        ("sluice-topic", delivery.topic().as_str().to_owned()),
    ];
    for (k, v) in sluice {
        if let Ok(v) = v.parse() {
            headers.insert(k, v);
        }
    }
    response
}

/// One verb of a settle.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settlement {
    lease: String,
    /// `ack`, `retry`, `release`, `dead_letter` or `extend`.
    verb: String,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    lease_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    settlements: Vec<Settlement>,
}

#[derive(Debug, Serialize)]
struct Settled {
    lease: String,
    /// `ok` or `failed`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(crate) async fn settle(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(view): Query<View>,
    Path(subscription): Path<String>,
    request: Result<Bytes, BytesRejection>,
) -> ApiResult<serde_json::Value> {
    let (_, _, physical) = consumable(
        &shared,
        &view,
        &grants,
        &subscription,
        "settle on subscription",
    )?;
    let body: SettleBody = serde_json::from_slice(&body(request)?)
        .map_err(|e| ApiError::bad_body(format!("the body is not valid: {e}")))?;
    // Every verb is checked before any is applied: a bad body settles nothing.
    for s in &body.settlements {
        verb_of(s)?;
    }
    let settles = body.settlements.into_iter().map(|s| {
        let shared = &shared;
        let physical = &physical;
        async move {
            let lease = s.lease.clone();
            match apply(shared, physical, s).await {
                Ok(()) => Settled {
                    lease,
                    status: "ok",
                    code: None,
                    error: None,
                },
                Err(e) => Settled {
                    lease,
                    status: "failed",
                    code: Some(e.code),
                    error: Some(e.message),
                },
            }
        }
    });
    let results = futures::future::join_all(settles).await;
    Ok(Json(serde_json::json!({ "results": results })))
}

enum Verb {
    Ack,
    Retry(Duration),
    Release,
    DeadLetter(DeadLetterReason),
    Extend(Duration),
}

fn verb_of(s: &Settlement) -> Result<Verb, ApiError> {
    Ok(match s.verb.as_str() {
        "ack" => Verb::Ack,
        "retry" => Verb::Retry(Duration::from_millis(s.delay_ms)),
        "release" => Verb::Release,
        "dead_letter" => {
            let mut reason = DeadLetterReason::new(
                s.reason
                    .clone()
                    .unwrap_or_else(|| "dead-lettered over HTTP".into()),
            );
            reason.last_error.clone_from(&s.last_error);
            Verb::DeadLetter(reason)
        }
        "extend" => match s.lease_ms.map(Duration::from_millis) {
            Some(lease) if lease > crate::MAX_LEASE => {
                return Err(ApiError::bad_body(format!(
                    "`lease_ms` is at most {} (12 hours)",
                    crate::MAX_LEASE.as_millis()
                )))
            }
            Some(lease) if !lease.is_zero() => Verb::Extend(lease),
            _ => return Err(ApiError::bad_body("`extend` needs `lease_ms`")),
        },
        other => {
            return Err(ApiError::bad_body(format!(
                "unknown verb `{other}`: ack, retry, release, dead_letter or extend"
            )))
        }
    })
}

async fn apply(shared: &Shared, physical: &str, s: Settlement) -> Result<(), ApiError> {
    let verb = verb_of(&s)?;
    let leases = &shared.http_leases;
    let slot = leases.slot(&s.lease, physical)?;
    // Verbs on one lease take turns: an `extend` under way is not a lost lease.
    let mut held = slot.lock().await;
    let Some(delivery) = held.as_mut() else {
        return Err(lease_lost());
    };
    let (name, result) = match verb {
        Verb::Extend(lease) => {
            return match delivery.extend_lease(lease).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    if matches!(e, Error::LeaseLost { .. }) {
                        *held = None;
                        leases.forget(&s.lease);
                    }
                    Err(e.into())
                }
            };
        }
        Verb::Ack => ("ack", held.take().expect("checked").ack().await),
        Verb::Retry(after) => ("retry", held.take().expect("checked").retry(after).await),
        Verb::Release => ("release", held.take().expect("checked").release().await),
        Verb::DeadLetter(reason) => (
            "dead_letter",
            held.take().expect("checked").dead_letter(reason).await,
        ),
    };
    match result {
        Ok(()) => {
            leases.forget(&s.lease);
            shared.metrics.settled(physical, name);
            Ok(())
        }
        Err(failed) => {
            if matches!(failed.error, Error::LeaseLost { .. }) {
                leases.forget(&s.lease);
            } else {
                // Handed back: the client may try again.
                *held = Some(failed.delivery);
            }
            Err(failed.error.into())
        }
    }
}
