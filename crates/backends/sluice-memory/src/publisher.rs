//! [`MemoryPublisher`]: validates, then publishes under the backend's lock.
//!
//! Invariants: a publish is confirmed when it returns (the state change is done under the
//! lock, nothing is ever in flight), so `close` has nothing to flush; once `closed` is set,
//! every later publish fails with `Error::Closed` before touching the state.

use std::sync::atomic::{AtomicBool, Ordering};

use sluice_core::{Backend, Error, Message, PublishReceipt, Publisher, Result, TopicName};

use crate::backend::MemoryBackend;

/// Publishes to a [`MemoryBackend`]. Made by [`Backend::publisher`].
#[derive(Debug)]
pub struct MemoryPublisher {
    backend: MemoryBackend,
    closed: AtomicBool,
}

impl MemoryPublisher {
    pub(crate) fn new(backend: MemoryBackend) -> Self {
        Self {
            backend,
            closed: AtomicBool::new(false),
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

    fn publish_now(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt> {
        self.check(&message)?;
        let id = message.id().clone();
        let outcome = self
            .backend
            .with_state(|state, now, clock| state.publish(topic, message, now, clock))?;
        Ok(PublishReceipt::new(id, outcome))
    }
}

impl Publisher for MemoryPublisher {
    async fn publish(&self, topic: &TopicName, message: Message) -> Result<PublishReceipt> {
        self.publish_now(topic, message)
    }

    /// Every message is published in order; one result per message. The memory backend
    /// accepts batches of any length (portable code keeps to `max_batch`).
    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Vec<Result<PublishReceipt>> {
        messages
            .into_iter()
            .map(|message| self.publish_now(topic, message))
            .collect()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
