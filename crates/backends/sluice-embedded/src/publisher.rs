//! [`EmbeddedPublisher`]: validates, converts and hands a batch to the engine, which confirms
//! it once its records are durable (group commit with every concurrent publisher).
//!
//! A topic whose backlog bound says `Block` ([`TopicConfig::backlog_bound`]) refuses a
//! publish that would exceed it with a timeout; the engine never blocks a thread, so the
//! waiting happens here: woken by the engine after every committed write (acks included), or
//! after a pause that doubles up to 200 ms, the publisher tries again until the timeout, then
//! fails with [`Error::BacklogFull`] naming the topic, its slowest subscription and the wait.
//! Under `Reject` it fails with `BacklogFull` at once.
//!
//! [`TopicConfig::backlog_bound`]: sluice_core::TopicConfig

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_core::{Error, Message, PublishOutcome, PublishReceipt, Publisher, TopicName};
use sluice_engine::engine::Published;

use crate::backend::Shared;
use crate::convert;

/// Longest pause between two tries of a publish waiting for room under a `Block` bound
/// (the engine's wake-up after each committed write usually comes first).
const MAX_ROOM_PAUSE: Duration = Duration::from_millis(200);

/// Publishes to the embedded engine. Cheap to clone; clones share their closed state.
#[derive(Clone)]
pub struct EmbeddedPublisher {
    shared: Arc<Shared>,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    closed: AtomicBool,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl std::fmt::Debug for EmbeddedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPublisher").finish_non_exhaustive()
    }
}

impl EmbeddedPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            state: Arc::default(),
        }
    }

    /// Validates one message against the backend's limits and stamps `published_at`.
    fn prepare(&self, mut message: Message, now: SystemTime) -> Result<Message, Error> {
        message.check_size(self.shared.capabilities.max_message_size)?;
        message.set_published_at(now);
        Ok(message)
    }
}

/// Decrements the in-flight count when a publish ends, however it ends.
struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Publisher for EmbeddedPublisher {
    async fn publish(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt, Error> {
        self.publish_batch(topic, vec![message])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::backend("the engine returned no result", false)))
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt, Error>> {
        if self.state.closed.load(Ordering::Acquire) {
            return messages
                .iter()
                .map(|_| Err(Error::Closed("publisher")))
                .collect();
        }
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(&self.state);
        let now = SystemTime::now();
        // Invalid messages fail alone; the valid ones go to the engine as one batch.
        let mut results: Vec<Option<Result<PublishReceipt, Error>>> =
            Vec::with_capacity(messages.len());
        let mut ids = Vec::new();
        let mut prepared = Vec::new();
        for message in messages {
            match self.prepare(message, now) {
                Ok(message) => {
                    ids.push(message.id().clone());
                    prepared.push(message);
                    results.push(None);
                }
                Err(err) => results.push(Some(Err(err))),
            }
        }
        if !prepared.is_empty() {
            let confirmed = self.publish_waiting_for_room(topic, &prepared).await;
            let mut outcomes = match confirmed {
                Ok(outcomes) => outcomes
                    .into_iter()
                    .map(|r| r.map_err(convert::error))
                    .collect::<Vec<_>>(),
                Err(err) => {
                    // The whole batch failed: every message gets the same error.
                    ids.iter().map(|_| Err(same_error(&err, topic))).collect()
                }
            }
            .into_iter();
            let mut ids = ids.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                let (Some(id), Some(outcome)) = (ids.next(), outcomes.next()) else {
                    *slot = Some(Err(Error::backend(
                        "the engine returned too few results",
                        false,
                    )));
                    continue;
                };
                *slot = Some(outcome.map(|p| {
                    let outcome = match p {
                        Published::Stored { .. } => PublishOutcome::Published,
                        Published::Duplicate => PublishOutcome::Duplicate,
                    };
                    PublishReceipt::new(id, outcome)
                }));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::backend("no result", false))))
            .collect()
    }

    async fn close(&self) -> Result<(), Error> {
        self.state.closed.store(true, Ordering::Release);
        loop {
            let idle = self.state.idle.notified();
            if self.state.in_flight.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            idle.await;
        }
    }
}

impl EmbeddedPublisher {
    /// Hands `messages` to the engine as one batch. While the topic's backlog bound refuses
    /// it with a `Block` timeout, waits for room (see the module documentation) and tries
    /// again; a refused publish did nothing in the engine, so trying again is safe. A full
    /// backlog is reported as `BacklogFull` with logical names.
    async fn publish_waiting_for_room(
        &self,
        topic: &TopicName,
        messages: &[Message],
    ) -> Result<Vec<sluice_engine::Result<Published>>, Error> {
        let physical = self.shared.topic(topic);
        let mut deadline = None;
        let mut pause = Duration::from_millis(5);
        loop {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let records = messages.iter().map(convert::to_record).collect();
            self.shared.engine.publish(
                &physical,
                records,
                Box::new(move |result| {
                    let _ = sender.send(result);
                }),
            );
            let outcome = receiver
                .await
                .map_err(|_| Error::Closed("the engine stopped before completing the operation"))?;
            let (backlog, bound, unit, slowest, block_timeout_ms) = match outcome {
                Err(sluice_engine::Error::BacklogFull {
                    backlog,
                    bound,
                    unit,
                    slowest,
                    block_timeout_ms,
                    ..
                }) => (backlog, bound, unit, slowest, block_timeout_ms),
                other => return other.map_err(convert::error),
            };
            let full = |waited| {
                let slowest = self.shared.logical(&slowest);
                convert::backlog_full(topic.as_str(), backlog, bound, unit, slowest, waited)
            };
            // `Reject`, or a publish larger than the bound by itself: waiting cannot help.
            let Some(timeout_ms) = block_timeout_ms else {
                return Err(full(None));
            };
            let timeout = Duration::from_millis(timeout_ms);
            let now = tokio::time::Instant::now();
            let deadline = *deadline.get_or_insert_with(|| now + timeout);
            if now >= deadline {
                return Err(full(Some(timeout)));
            }
            let room = self.shared.notify.notified();
            let _ = tokio::time::timeout(pause.min(deadline - now), room).await;
            pause = (pause * 2).min(MAX_ROOM_PAUSE);
        }
    }
}

/// The same error again (errors are not `Clone`), with the topic's logical name.
fn same_error(err: &Error, topic: &TopicName) -> Error {
    match err {
        Error::NotFound { .. } => Error::topic_not_found(topic.as_str()),
        Error::Closed(what) => Error::Closed(what),
        Error::BacklogFull { topic, detail } => {
            Error::backlog_full(topic.as_str(), detail.as_str())
        }
        other => Error::backend(other.to_string(), other.is_retryable()),
    }
}
