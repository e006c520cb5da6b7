//! Operations every backend offers on subscriptions: stats and the dead-letter queue tools.

use std::time::Duration;

use crate::config::{SubscriptionConfig, TopicConfig};
use crate::envelope::Envelope;
use crate::message::Message;
use crate::name::{SubscriptionName, TopicName};

/// A subscription's counters. Every field is optional: not every broker can tell them all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// Messages ready for delivery now.
    pub ready: Option<u64>,
    /// Messages delivered and not yet settled.
    pub in_flight: Option<u64>,
    /// Messages waiting for a delay or retry time.
    pub delayed: Option<u64>,
    /// Messages in the dead-letter queue.
    pub dead_lettered: Option<u64>,
    /// Age of the oldest message not yet acked.
    pub oldest_age: Option<Duration>,
    /// Messages not yet settled — ready, in flight and retrying together — where the backend
    /// cannot tell those apart (Kafka: the end offsets less the group's committed offsets,
    /// retry tiers included; delayed publishes not yet moved are in `delayed`).
    pub unsettled: Option<u64>,
}

impl SubscriptionStats {
    /// Ready plus in flight plus delayed: everything still to be handled (or
    /// [`unsettled`](Self::unsettled) plus delayed where only that is known).
    pub fn backlog(&self) -> Option<u64> {
        let delayed = self.delayed.unwrap_or(0);
        match self.ready {
            Some(ready) => Some(ready + self.in_flight.unwrap_or(0) + delayed),
            None => self.unsettled.map(|unsettled| unsettled + delayed),
        }
    }
}

/// A topic as described by a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// Its name.
    pub name: TopicName,
    /// Its configuration.
    pub config: TopicConfig,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionName>,
}

/// A subscription as described by a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionInfo {
    /// Its name.
    pub name: SubscriptionName,
    /// Its configuration (the start position is the one it was created with).
    pub config: SubscriptionConfig,
}

impl TopicInfo {
    /// A topic description.
    pub fn new(name: TopicName, config: TopicConfig, subscriptions: Vec<SubscriptionName>) -> Self {
        Self {
            name,
            config,
            subscriptions,
        }
    }
}

impl SubscriptionInfo {
    /// A subscription description.
    pub fn new(name: SubscriptionName, config: SubscriptionConfig) -> Self {
        Self { name, config }
    }
}

/// A message in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetteredMessage {
    /// The message, envelope headers included.
    pub message: Message,
    /// Its envelope; `None` if a broker's own limit put it there.
    pub envelope: Option<Envelope>,
}

impl DeadLetteredMessage {
    /// Wraps a message, reading its envelope.
    pub fn new(message: Message) -> Self {
        let envelope = Envelope::read(&message);
        Self { message, envelope }
    }
}

/// Which dead-lettered messages to redrive, and how.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RedriveOptions {
    /// Only these message ids (all when empty).
    pub ids: Vec<String>,
    /// At most this many messages.
    pub limit: Option<usize>,
    /// Report what would move without moving anything.
    pub dry_run: bool,
    /// At most this many messages per second.
    pub rate_per_second: Option<u32>,
}

impl RedriveOptions {
    /// Redrive everything.
    pub fn all() -> Self {
        Self::default()
    }
    /// Only these ids.
    #[must_use]
    pub fn ids(mut self, ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.ids = ids.into_iter().map(Into::into).collect();
        self
    }
    /// At most `limit` messages.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
    /// Dry run.
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// Rate limit.
    #[must_use]
    pub fn rate_per_second(mut self, rate: u32) -> Self {
        self.rate_per_second = Some(rate.max(1));
        self
    }
    /// Whether this message is selected by the id list.
    pub fn selects(&self, message: &Message) -> bool {
        self.ids.is_empty() || self.ids.iter().any(|id| id == message.id().as_str())
    }
}

/// What a redrive did (or, on a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveReport {
    /// Ids moved back (or that would be).
    pub moved: Vec<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}
