//! Handlers: what users write. A handler decodes a message into its input, then handles it.
//!
//! Decoding is a separate step so the runtime can dead-letter an undecodable payload without
//! running the handler (a poison message never crash-loops). Raw handlers take the payload
//! bytes; typed handlers ([`json_handler`]) take a serde type.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use sluice_core::{BoxError, Message, SubscriptionName, TopicName};
use tokio_util::sync::CancellationToken;

/// What a handler knows about the delivery it handles.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) message: Arc<Message>,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) topic: TopicName,
    pub(crate) subscription: SubscriptionName,
    pub(crate) lease_deadline: Instant,
    pub(crate) shutdown: CancellationToken,
    // std Mutex: never held across an .await.
    pub(crate) result: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
}

impl Context {
    /// The message: id, type, keys, headers, payload.
    pub fn message(&self) -> &Message {
        &self.message
    }
    /// The message id (idempotency key).
    pub fn id(&self) -> &str {
        self.message.id().as_str()
    }
    /// 1-based attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The subscription's max attempts.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
    /// Whether this is the last attempt before dead-lettering.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
    /// The topic.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }
    /// The subscription.
    pub fn subscription(&self) -> &SubscriptionName {
        &self.subscription
    }
    /// When the delivery's lease runs out (tokio clock).
    pub fn lease_deadline(&self) -> Instant {
        self.lease_deadline
    }
    /// Cancelled when the worker's shutdown grace period is over: a long handler may watch
    /// it to stop early (the delivery is then released).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
    /// Leaves a small result for the job's status (`Jobs::status` shows it once the job
    /// succeeded; keep it short, it is stored with the status). The last call wins; a value
    /// that cannot be encoded as JSON is ignored.
    pub fn set_result(&self, result: impl serde::Serialize) {
        if let Ok(value) = serde_json::to_value(result) {
            *self.result.lock().expect("result") = Some(value);
        }
    }
}

/// How a handler failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// May succeed later: retried with backoff while attempts are left, then dead-lettered.
    Transient {
        /// Retry after this delay instead of the backoff policy's.
        retry_after: Option<Duration>,
    },
    /// Will never succeed: dead-lettered at once.
    Permanent,
    /// The downstream is rate limiting (an HTTP 429): the delivery's key waits this long, then
    /// the delivery runs again, without spending an attempt (see [`crate::key_limit`]).
    RateLimited {
        /// How long the key (or, without one, the worker) waits.
        retry_after: Duration,
    },
}

/// A handler's failure, classified. Any `std::error::Error` converts into a transient one
/// with `?`; use [`HandlerError::permanent`] for errors that retrying cannot fix.
pub struct HandlerError {
    kind: ErrorKind,
    error: BoxError,
}

impl HandlerError {
    /// A transient failure: retried with backoff.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Transient { retry_after: None },
            error: error.into(),
        }
    }
    /// A transient failure to retry after `delay` (a downstream's `Retry-After`).
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> Self {
        Self {
            kind: ErrorKind::Transient {
                retry_after: Some(delay),
            },
            error: error.into(),
        }
    }
    /// The downstream said "too many requests" (HTTP 429 with `Retry-After`): nothing of this
    /// delivery's key runs for `retry_after` (of the whole worker, when the worker has no
    /// [`KeyLimit`](crate::KeyLimit) or the message no key); then the delivery runs again. It
    /// does not spend an attempt, and does not count as a failure for the circuit breaker.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Self {
            kind: ErrorKind::RateLimited { retry_after },
            error: format!("rate limited by the downstream for {retry_after:?}").into(),
        }
    }
    /// A permanent failure: dead-lettered at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            error: error.into(),
        }
    }
    /// Its classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }
    /// A copy for another message (a batch's failure, applied to each of its messages; a
    /// second copy of a message ending as its first): the same kind, the error's text.
    #[must_use]
    pub fn copy(&self) -> Self {
        Self {
            kind: self.kind,
            error: self.error.to_string().into(),
        }
    }
}

impl std::fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::transient(error)
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// A message that could not be decoded into the handler's input: it is dead-lettered with
/// [`reason`](Self::reason) and the detail as its last error (or, for an unknown type under
/// [`UnknownType::Ack`](crate::UnknownType), acked and skipped).
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    reason: &'static str,
    detail: String,
    ack: bool,
}

impl DecodeError {
    /// The payload does not decode (reason `undecodable payload`).
    pub fn undecodable(detail: impl Into<String>) -> Self {
        Self {
            reason: "undecodable payload",
            detail: detail.into(),
            ack: false,
        }
    }
    /// No handler for the message's type (reason `unknown message type`).
    pub fn unknown_type(detail: impl Into<String>) -> Self {
        Self {
            reason: "unknown message type",
            detail: detail.into(),
            ack: false,
        }
    }
    /// The same error, but the message is acked and skipped instead of dead-lettered.
    #[must_use]
    pub fn ack_and_skip(mut self) -> Self {
        self.ack = true;
        self
    }
    /// Whether the message is acked and skipped rather than dead-lettered.
    pub fn is_ack_and_skip(&self) -> bool {
        self.ack
    }
    /// The short reason, used as the dead-letter reason.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
    /// What exactly failed, kept as the envelope's last error.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Handles the messages of a subscription.
pub trait Handler: Send + Sync + 'static {
    /// The decoded input.
    type Input: Send + 'static;

    /// Decodes a message; an error dead-letters it without running [`handle`](Self::handle).
    fn decode(&self, message: &Message) -> Result<Self::Input, DecodeError>;

    /// Handles one decoded message. `Ok` acks it; an error retries or dead-letters it; a
    /// panic counts as a transient error.
    fn handle(
        &self,
        input: Self::Input,
        ctx: Context,
    ) -> impl Future<Output = HandlerResult> + Send;
}

/// A handler on raw payload bytes, from a closure. See [`raw_handler`].
pub struct RawHandler<F> {
    f: F,
}

/// A handler on the payload bytes: `raw_handler(|payload: Bytes, ctx: Context| async move { … })`.
pub fn raw_handler<F, Fut>(f: F) -> RawHandler<F>
where
    F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    RawHandler { f }
}

impl<F, Fut> Handler for RawHandler<F>
where
    F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    type Input = Bytes;
    fn decode(&self, message: &Message) -> Result<Bytes, DecodeError> {
        Ok(message.payload().clone())
    }
    fn handle(&self, input: Bytes, ctx: Context) -> impl Future<Output = HandlerResult> + Send {
        (self.f)(input, ctx)
    }
}

/// A handler on a serde type decoded from JSON. See [`json_handler`].
pub struct JsonHandler<T, F> {
    f: F,
    _input: PhantomData<fn() -> T>,
}

/// A handler on a JSON-decoded type: `json_handler(|order: Order, ctx: Context| async move { … })`.
/// A payload that is not valid JSON for `T`, or whose `content_type` is set and not JSON, is
/// dead-lettered with the decoding error as the reason.
pub fn json_handler<T, F, Fut>(f: F) -> JsonHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    JsonHandler {
        f,
        _input: PhantomData,
    }
}

/// Decodes a message's JSON payload into `T`, checking its content type.
pub fn decode_json<T: DeserializeOwned>(message: &Message) -> Result<T, DecodeError> {
    if let Some(ct) = message.content_type() {
        if !ct.contains("json") {
            return Err(DecodeError::undecodable(format!(
                "content type `{ct}` is not JSON"
            )));
        }
    }
    serde_json::from_slice(message.payload()).map_err(|e| {
        DecodeError::undecodable(format!(
            "payload is not a valid {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

impl<T, F, Fut> Handler for JsonHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    type Input = T;
    fn decode(&self, message: &Message) -> Result<T, DecodeError> {
        decode_json(message)
    }
    fn handle(&self, input: T, ctx: Context) -> impl Future<Output = HandlerResult> + Send {
        (self.f)(input, ctx)
    }
}

/// A JSON message builder for a serde value (`content_type` `application/json`).
pub fn json_message<T: serde::Serialize>(
    value: &T,
) -> Result<sluice_core::MessageBuilder, serde_json::Error> {
    Ok(Message::json_builder(serde_json::to_vec(value)?))
}
