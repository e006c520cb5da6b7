//! Publishing: the producer side of the contract.

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::message::{Message, MessageId};
use crate::name::TopicName;

/// What happened to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The backend holds the message and will deliver it to every matching subscription.
    Published,
    /// The id was already published within the topic's dedup window: accepted and dropped.
    Duplicate,
}

/// The confirmation of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The message id.
    pub id: MessageId,
    /// Whether it was stored or dropped as a duplicate.
    pub outcome: PublishOutcome,
}

impl PublishReceipt {
    /// A receipt.
    pub fn new(id: MessageId, outcome: PublishOutcome) -> Self {
        Self { id, outcome }
    }
}

/// Publishes messages to topics.
///
/// # Contract
/// - **Thread safety**: a publisher is `Send + Sync`; concurrent calls are allowed and are
///   how throughput is reached (backends batch concurrent publishes into one write).
/// - **Confirmation**: a publish returns `Ok` only once the backend holds the message as
///   durably as it can (fsynced for the embedded engine, broker-confirmed for RabbitMQ and
///   Kafka, accepted by SQS). An `Err` means the message may or may not have been stored:
///   publishing the same id again is safe when the topic has a dedup window.
/// - **Topic**: the topic must exist ([`Backend::ensure_topic`](crate::Backend)); publishing
///   to a missing topic fails with [`Error::NotFound`](crate::Error).
/// - **Validation**: a message larger than the backend's
///   [`max_message_size`](crate::Capabilities) fails with
///   [`MessageError::TooLarge`](crate::MessageError) before anything is sent; a delay beyond
///   [`max_delay`](crate::Capabilities) fails with `DelayTooLong`.
/// - **Dedup**: with a dedup window, a second publish of an id within the window returns
///   [`PublishOutcome::Duplicate`] and is not delivered again.
/// - **Close**: [`close`](Self::close) waits for publishes in flight to be confirmed; after
///   it, publishing fails with [`Error::Closed`](crate::Error).
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message and waits for its confirmation.
    fn publish(
        &self,
        topic: &TopicName,
        message: Message,
    ) -> impl Future<Output = Result<PublishReceipt>> + Send;

    /// Publishes a batch and returns one result per message, in order. Not atomic: some may
    /// succeed and others fail. Messages sharing an ordering key keep their batch order.
    fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> impl Future<Output = Vec<Result<PublishReceipt>>> + Send;

    /// Waits for every publish in flight to be confirmed, then refuses new ones.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;

    /// Publishes a message that becomes deliverable after `delay`.
    fn publish_delayed(
        &self,
        topic: &TopicName,
        mut message: Message,
        delay: Duration,
    ) -> impl Future<Output = Result<PublishReceipt>> + Send {
        async move {
            message.set_deliver_at(Some(crate::message::deliver_after(delay)?));
            self.publish(topic, message).await
        }
    }

    /// Publishes a message that becomes deliverable at `at`.
    fn publish_at(
        &self,
        topic: &TopicName,
        mut message: Message,
        at: SystemTime,
    ) -> impl Future<Output = Result<PublishReceipt>> + Send {
        message.set_deliver_at(Some(at));
        self.publish(topic, message)
    }
}
