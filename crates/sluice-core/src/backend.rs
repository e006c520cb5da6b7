//! A backend: one connection to a broker (or the in-process engine), the factory of
//! publishers and subscribers, and the topology and operations every backend offers.

use std::future::Future;
use std::sync::Arc;

use crate::capabilities::Capabilities;
use crate::config::{SubscriptionConfig, TopicConfig};
use crate::delivery::Subscriber;
use crate::error::Result;
use crate::jobs::JobStore;
use crate::name::{Naming, SubscriptionName, TopicName};
use crate::ops::{
    DeadLetteredMessage, RedriveOptions, RedriveReport, SubscriptionInfo, SubscriptionStats,
    TopicInfo,
};
use crate::publisher::Publisher;

/// A backend: Sluice's model on one broker.
///
/// # Contract
/// - **Cheap to share**: `Send + Sync`; clone it (backends are handles) or wrap it in an
///   `Arc`. Publishers and subscribers made from it share its connection.
/// - **Topology is explicit and idempotent**: `ensure_*` creates an object or checks that the
///   existing one has the same configuration; a different one is [`Error::Conflict`]
///   naming the field. Subscription names are unique per namespace: the same name on another
///   topic is a conflict.
/// - **Delete** removes the object and its messages; deleting a topic deletes its
///   subscriptions. Deleting what does not exist is [`Error::NotFound`].
///
/// [`Error::Conflict`]: crate::Error::Conflict
/// [`Error::NotFound`]: crate::Error::NotFound
pub trait Backend: Send + Sync + 'static {
    /// Its publisher.
    type Publisher: Publisher;
    /// Its subscriber.
    type Subscriber: Subscriber;

    /// What it can do.
    fn capabilities(&self) -> &Capabilities;

    /// How it names physical objects (with its namespace).
    fn naming(&self) -> &Naming;

    /// A publisher sharing this backend's connection.
    fn publisher(&self) -> impl Future<Output = Result<Self::Publisher>> + Send;

    /// A subscriber of an existing subscription.
    fn subscribe(
        &self,
        subscription: &SubscriptionName,
    ) -> impl Future<Output = Result<Self::Subscriber>> + Send;

    /// Creates the topic, or checks that it exists with this configuration.
    fn ensure_topic(
        &self,
        topic: &TopicName,
        config: &TopicConfig,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Creates the subscription, or checks that it exists with this configuration (the start
    /// position is used only at creation). Its topic must exist.
    fn ensure_subscription(
        &self,
        subscription: &SubscriptionName,
        config: &SubscriptionConfig,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Describes a topic.
    fn describe_topic(&self, topic: &TopicName) -> impl Future<Output = Result<TopicInfo>> + Send;

    /// Describes a subscription.
    fn describe_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> impl Future<Output = Result<SubscriptionInfo>> + Send;

    /// Every topic.
    fn list_topics(&self) -> impl Future<Output = Result<Vec<TopicInfo>>> + Send;

    /// Deletes a topic, its subscriptions and their messages.
    fn delete_topic(&self, topic: &TopicName) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a subscription and its messages (its DLQ too).
    fn delete_subscription(
        &self,
        subscription: &SubscriptionName,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A subscription's counters.
    fn stats(
        &self,
        subscription: &SubscriptionName,
    ) -> impl Future<Output = Result<SubscriptionStats>> + Send;

    /// Up to `limit` messages of the subscription's DLQ, oldest first, without removing them.
    fn dlq_list(
        &self,
        subscription: &SubscriptionName,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetteredMessage>>> + Send;

    /// Moves dead-lettered messages back to the subscription (not to the topic's other
    /// subscriptions): envelope removed, `attempt` starting again at 1.
    fn dlq_redrive(
        &self,
        subscription: &SubscriptionName,
        options: &RedriveOptions,
    ) -> impl Future<Output = Result<RedriveReport>> + Send;

    /// Deletes every message of the subscription's DLQ; returns how many.
    fn dlq_purge(
        &self,
        subscription: &SubscriptionName,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Where this backend keeps job status, cancellations, unique locks and the schedule
    /// registry natively and durably, if it does: the embedded engine in its data directory,
    /// `sluice://` in the server's. `Jobs` uses it unless given a store; the brokers have
    /// none (`None`, the default) and `Jobs` falls back to memory.
    fn job_store(&self) -> Option<Arc<dyn JobStore>> {
        None
    }
}
