//! Batch handlers: many messages in one call, each settled on its own.
//!
//! A batch handler gets up to `max_messages` decoded messages at once (write them with one
//! `COPY`, call a bulk API once) and returns a [`BatchOutcome`]: every message succeeded,
//! or one result per message. Each message keeps its own attempt count, backoff, max
//! attempts and dead-letter queue; messages that do not decode, and duplicates (with an
//! idempotency store, [`WorkerBuilder::idempotency`](crate::WorkerBuilder::idempotency)),
//! are settled before the handler sees them. A batch that fails as a whole (an `Err`, a
//! panic, a timeout) fails each of its messages with that error.
//!
//! ```no_run
//! # async fn example(subscriber: impl sluice_core::Subscriber) {
//! use std::time::Duration;
//! use sluice_runtime::{json_batch_handler, BatchContext, BatchOutcome, Context, Worker};
//!
//! #[derive(serde::Deserialize)]
//! struct Reading { sensor: String, value: f64 }
//!
//! let handler = json_batch_handler(|batch: Vec<(Reading, Context)>, _ctx: BatchContext| async move {
//!     // one INSERT … VALUES (…), (…), … for the whole batch
//!     let _rows: Vec<(String, f64)> = batch.into_iter().map(|(r, _)| (r.sensor, r.value)).collect();
//!     Ok(BatchOutcome::AllOk)
//! });
//! let worker = Worker::builder(subscriber, handler)
//!     .batch(500, Duration::from_millis(200))
//!     .build();
//! worker.run(sluice_runtime::shutdown_on_signals()).await;
//! # }
//! ```
//!
//! How batches form, and what ordering keys, leases and shutdown do with them, is described
//! on [`WorkerBuilder::batch`](crate::WorkerBuilder::batch).

use std::future::Future;
use std::marker::PhantomData;
use std::time::Instant;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use sluice_core::{Message, SubscriptionName, TopicName};
use tokio_util::sync::CancellationToken;

use crate::handler::{decode_json, Context, DecodeError, HandlerError, HandlerResult};

/// What a batch handler returns: `Ok` with each message's outcome, or `Err` when the batch
/// failed as a whole (every message is then retried or dead-lettered as a single handler's
/// error would make it: transient, retry after, permanent).
pub type BatchResult = Result<BatchOutcome, HandlerError>;

/// How each message of a batch ended.
#[derive(Debug)]
pub enum BatchOutcome {
    /// Every message succeeded: all are acked.
    AllOk,
    /// One result per message, in the batch's order: `Ok` acks it, an error retries it
    /// (transient, [`HandlerError::retry_after`]) or dead-letters it
    /// ([`HandlerError::permanent`], with the error as the reason's detail), as for a
    /// single handler. A list of the wrong length fails the whole batch (transient).
    PerMessage(Vec<HandlerResult>),
}

impl BatchOutcome {
    /// One result per message, from a function of its index in the batch.
    pub fn each(len: usize, mut f: impl FnMut(usize) -> HandlerResult) -> Self {
        BatchOutcome::PerMessage((0..len).map(&mut f).collect())
    }

    /// The result of each message of a batch of `len`: [`AllOk`](Self::AllOk) is `len`
    /// successes; a list of another length is `len` transient errors (a handler bug, logged).
    pub fn into_results(self, len: usize) -> Vec<HandlerResult> {
        match self {
            BatchOutcome::AllOk => (0..len).map(|_| Ok(())).collect(),
            BatchOutcome::PerMessage(results) if results.len() == len => results,
            BatchOutcome::PerMessage(results) => {
                let error = HandlerError::transient(format!(
                    "the batch handler returned {} outcomes for a batch of {len} messages",
                    results.len()
                ));
                tracing::error!(%error, "batch handler bug; retrying the whole batch");
                (0..len).map(|_| Err(error.copy())).collect()
            }
        }
    }
}

/// What a batch handler knows about its batch (each message's own [`Context`] comes with
/// it).
#[derive(Debug, Clone)]
pub struct BatchContext {
    pub(crate) len: usize,
    pub(crate) topic: TopicName,
    pub(crate) subscription: SubscriptionName,
    pub(crate) lease_deadline: Instant,
    pub(crate) shutdown: CancellationToken,
}

impl BatchContext {
    /// How many messages the handler got.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the batch is empty (never: a batch holds at least one message).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The topic.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }
    /// The subscription.
    pub fn subscription(&self) -> &SubscriptionName {
        &self.subscription
    }
    /// The earliest lease deadline of the batch's messages (tokio clock) when the batch
    /// closed (before any wait behind an earlier batch); leases are extended while it waits
    /// and runs, like a single handler's.
    pub fn lease_deadline(&self) -> Instant {
        self.lease_deadline
    }
    /// Cancelled when the worker's shutdown grace period is over: a long batch may watch it
    /// and return early (what it returns is applied; a batch still running at that moment is
    /// abandoned and its messages released).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
    /// The same context for `len` of the batch's messages: for a handler that hands part of
    /// its batch on (the transactional inbox hands on all but the duplicates).
    #[must_use]
    pub fn with_len(mut self, len: usize) -> Self {
        self.len = len;
        self
    }
}

/// Handles the messages of a subscription a batch at a time. Wrap one in [`Batched`] to give
/// it to [`Worker::builder`](crate::Worker::builder); [`batch_handler`] and
/// [`json_batch_handler`] make one from a closure.
pub trait BatchHandler: Send + Sync + 'static {
    /// The decoded input of one message.
    type Input: Send + 'static;

    /// Decodes one message; an error dead-letters it (or acks and skips it) without it ever
    /// reaching [`handle`](Self::handle).
    fn decode(&self, message: &Message) -> Result<Self::Input, DecodeError>;

    /// Handles a batch: the decoded messages with their contexts, in delivery order.
    fn handle(
        &self,
        batch: Vec<(Self::Input, Context)>,
        ctx: BatchContext,
    ) -> impl Future<Output = BatchResult> + Send;
}

/// A [`BatchHandler`] as a worker's handler: `Worker::builder(subscriber, Batched::new(h))`.
#[derive(Debug, Clone)]
pub struct Batched<B>(pub(crate) B);

impl<B: BatchHandler> Batched<B> {
    /// Runs `handler` a batch at a time.
    pub fn new(handler: B) -> Self {
        Self(handler)
    }
    /// The batch handler.
    pub fn handler(&self) -> &B {
        &self.0
    }
}

/// A batch handler on raw payload bytes, from a closure. See [`batch_handler`].
pub struct RawBatchHandler<F> {
    f: F,
}

/// A batch handler on the payload bytes:
/// `batch_handler(|batch: Vec<(Bytes, Context)>, ctx: BatchContext| async move { … })`.
pub fn batch_handler<F, Fut>(f: F) -> Batched<RawBatchHandler<F>>
where
    F: Fn(Vec<(Bytes, Context)>, BatchContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BatchResult> + Send + 'static,
{
    Batched(RawBatchHandler { f })
}

impl<F, Fut> BatchHandler for RawBatchHandler<F>
where
    F: Fn(Vec<(Bytes, Context)>, BatchContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BatchResult> + Send + 'static,
{
    type Input = Bytes;
    fn decode(&self, message: &Message) -> Result<Bytes, DecodeError> {
        Ok(message.payload().clone())
    }
    fn handle(
        &self,
        batch: Vec<(Bytes, Context)>,
        ctx: BatchContext,
    ) -> impl Future<Output = BatchResult> + Send {
        (self.f)(batch, ctx)
    }
}

/// A batch handler on a JSON-decoded type. See [`json_batch_handler`].
pub struct JsonBatchHandler<T, F> {
    f: F,
    _input: PhantomData<fn() -> T>,
}

/// A batch handler on a JSON-decoded type (a typed event or job):
/// `json_batch_handler(|batch: Vec<(Order, Context)>, ctx: BatchContext| async move { … })`.
/// A message that is not valid JSON for `T` is dead-lettered with the decoding error, and
/// the batch goes on without it.
pub fn json_batch_handler<T, F, Fut>(f: F) -> Batched<JsonBatchHandler<T, F>>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Vec<(T, Context)>, BatchContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BatchResult> + Send + 'static,
{
    Batched(JsonBatchHandler {
        f,
        _input: PhantomData,
    })
}

impl<T, F, Fut> BatchHandler for JsonBatchHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Vec<(T, Context)>, BatchContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BatchResult> + Send + 'static,
{
    type Input = T;
    fn decode(&self, message: &Message) -> Result<T, DecodeError> {
        decode_json(message)
    }
    fn handle(
        &self,
        batch: Vec<(T, Context)>,
        ctx: BatchContext,
    ) -> impl Future<Output = BatchResult> + Send {
        (self.f)(batch, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_list_of_the_wrong_length_fails_every_message() {
        let results = BatchOutcome::PerMessage(vec![Ok(())]).into_results(3);
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(Result::is_err), "{results:?}");
    }

    #[test]
    fn all_ok_acks_each_message_and_each_keeps_its_own_result() {
        assert!(BatchOutcome::AllOk
            .into_results(4)
            .iter()
            .all(Result::is_ok));
        let each = BatchOutcome::each(3, |i| {
            if i == 1 {
                Err(HandlerError::permanent("bad"))
            } else {
                Ok(())
            }
        })
        .into_results(3);
        assert!(each[0].is_ok() && each[1].is_err() && each[2].is_ok());
    }
}
