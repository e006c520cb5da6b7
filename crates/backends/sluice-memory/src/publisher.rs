//! [`MemoryPublisher`]: validates, then publishes under the backend's lock.
//!
//! Invariants: a publish is confirmed when it returns (the state change is done under the
//! lock, nothing is ever in flight), so `close` has nothing to flush; once `closed` is set,
//! every later publish fails with `Error::Closed` before touching the state.
//!
//! Backlog bounds: a publish the topic's bound refuses fails with `Error::BacklogFull` at
//! once under `Overflow::Reject`. Under `Overflow::Block { timeout }` it waits outside the
//! lock, without blocking a thread, on the state's `room` notification (registered *before*
//! each try, so no wake-up between a try and the wait is lost), on the backend's clock
//! (tokio's: paused in tests), and tries again on each wake-up until the timeout; then it
//! fails with `BacklogFull`. A waiting publish is not in flight in the engine sense: it has
//! stored nothing, and `close` does not wait for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_core::{Backend, Error, Message, PublishReceipt, Publisher, Result, TopicName};
use tokio::sync::Notify;

use crate::backend::MemoryBackend;
use crate::state::Refused;

/// Publishes to a [`MemoryBackend`]. Made by [`Backend::publisher`].
#[derive(Debug)]
pub struct MemoryPublisher {
    backend: MemoryBackend,
    closed: AtomicBool,
    /// The state's `room` notification (see the module docs).
    room: Arc<Notify>,
}

impl MemoryPublisher {
    pub(crate) fn new(backend: MemoryBackend) -> Self {
        let room = backend.with_state(|state, _, _| Arc::clone(&state.room));
        Self {
            backend,
            closed: AtomicBool::new(false),
            room,
        }
    }

    /// Checks the publisher and the message before anything is stored.
    fn check(&self, message: &Message) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("publisher"));
        }
        message.check_size(self.backend.capabilities().max_message_size)?;
        Ok(())
    }

    /// Publishes one message, waiting for room under a `Block` backlog bound.
    async fn publish_one(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt> {
        self.check(&message)?;
        let id = message.id().clone();
        let mut message = message;
        let mut deadline = None;
        loop {
            // Registered before the try: a settle between the try and the wait wakes it.
            let room = self.room.notified();
            let (result, now) = self
                .backend
                .with_state(|state, now, clock| (state.publish(topic, message, now, clock), now));
            let full = match result {
                Ok(outcome) => return Ok(PublishReceipt::new(id, outcome)),
                Err(Refused::Failed(error)) => return Err(error),
                Err(Refused::Full(full)) => full,
            };
            let Some(timeout) = full.wait else {
                return Err(Error::backlog_full(topic.as_str(), full.detail));
            };
            let deadline = *deadline.get_or_insert_with(|| now + timeout);
            if now >= deadline {
                let detail = format!("{}; no room was made within {timeout:?}", full.detail);
                return Err(Error::backlog_full(topic.as_str(), detail));
            }
            message = full.message;
            // Woken by a settle, or at the deadline for one last try.
            let _ = tokio::time::timeout_at(deadline, room).await;
        }
    }
}

impl Publisher for MemoryPublisher {
    async fn publish(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt> {
        self.publish_one(topic, message).await
    }

    /// Every message is published in order (each waiting for room under a `Block` backlog
    /// bound); one result per message. The memory backend accepts batches of any length
    /// (portable code keeps to `max_batch`).
    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt>> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.publish_one(topic, message).await);
        }
        results
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
