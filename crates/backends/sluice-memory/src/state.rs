//! The backend's whole state: topics and subscriptions, and the topology operations on them.
//!
//! Invariants:
//! - Subscription names are unique across topics (one map for the whole backend), and
//!   `topics[t].subscriptions` holds exactly the subscriptions whose `config.topic` is `t`.
//! - Deleting a topic deletes its subscriptions; deleting a subscription wakes its waiting
//!   receivers so they see it is gone.
//! - A publish appends to the topic log and enqueues into every subscription whose filter
//!   matches, atomically under the backend's lock: a subscription created before the publish
//!   gets the message exactly once (live or by replay, never both).
//! - `next_id` only grows: subscription incarnations never repeat.
//! - A topic's backlog bound is checked first in a publish, before the dedup window records
//!   the id: a refused publish changes nothing and can be tried again as it is.
//! - `room` is woken whenever a backlog may have shrunk (a message settled, a subscription
//!   or topic deleted): publishers waiting under `Overflow::Block` try again then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    BacklogBound, Error, Message, ObjectKind, Overflow, PublishOutcome, SubscriptionConfig,
    SubscriptionName, TopicConfig, TopicInfo, TopicName,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::subscription::Subscription;
use crate::topic::{Stored, Topic};

/// Everything the backend holds.
#[derive(Debug, Default)]
pub(crate) struct State {
    topics: BTreeMap<TopicName, Topic>,
    subscriptions: BTreeMap<SubscriptionName, Subscription>,
    next_id: u64,
    /// Woken when a backlog may have shrunk (see the module docs).
    pub(crate) room: Arc<Notify>,
}

/// Why a publish was not done.
#[derive(Debug)]
pub(crate) enum Refused {
    /// It failed (unknown topic, …).
    Failed(Error),
    /// The topic's backlog bound refused it; the message is handed back untouched (boxed:
    /// a message is large, and the `Ok` path should not pay for it).
    Full(Box<Full>),
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Refused::Failed(error)
    }
}

/// A publish the topic's backlog bound refused.
#[derive(Debug)]
pub(crate) struct Full {
    /// The message, to try again.
    pub(crate) message: Message,
    /// What is full and who is behind (the `detail` of `Error::BacklogFull`).
    pub(crate) detail: String,
    /// How long the publisher may wait for room: the `Block` timeout, unless the overflow
    /// is `Reject` or the message alone exceeds the bound (waiting cannot help).
    pub(crate) wait: Option<Duration>,
}

impl State {
    /// A fresh id (subscription incarnations, subscribers).
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn ensure_topic(
        &mut self,
        name: &TopicName,
        config: &TopicConfig,
    ) -> Result<(), Error> {
        match self.topics.get(name) {
            Some(topic) => match topic.config.difference(config) {
                Some(difference) => Err(conflict(ObjectKind::Topic, name.as_str(), difference)),
                None => Ok(()),
            },
            None => {
                self.topics.insert(name.clone(), Topic::new(config.clone()));
                Ok(())
            }
        }
    }

    pub(crate) fn ensure_subscription(
        &mut self,
        name: &SubscriptionName,
        config: &SubscriptionConfig,
        now: Instant,
    ) -> Result<(), Error> {
        if let Some(existing) = self.subscriptions.get_mut(name) {
            return match existing.config.difference(config) {
                Some(difference) => Err(conflict(
                    ObjectKind::Subscription,
                    name.as_str(),
                    difference,
                )),
                None => {
                    // Prefetch is a consumer-side setting: the latest ensure wins.
                    existing.config.prefetch = config.prefetch;
                    Ok(())
                }
            };
        }
        let id = self.next_id();
        let topic = self
            .topics
            .get_mut(&config.topic)
            .ok_or_else(|| Error::topic_not_found(config.topic.as_str()))?;
        let mut subscription = Subscription::new(id, name.clone(), config.clone());
        for stored in topic.replay(config.start) {
            if subscription.matches(&stored.message) {
                subscription.enqueue(Arc::clone(stored), now);
            }
        }
        topic.subscriptions.insert(name.clone());
        self.subscriptions.insert(name.clone(), subscription);
        Ok(())
    }

    pub(crate) fn describe_topic(&self, name: &TopicName) -> Result<TopicInfo, Error> {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| Error::topic_not_found(name.as_str()))?;
        Ok(TopicInfo::new(
            name.clone(),
            topic.config.clone(),
            topic.subscriptions.iter().cloned().collect(),
        ))
    }

    pub(crate) fn list_topics(&self) -> Vec<TopicInfo> {
        self.topics
            .keys()
            .filter_map(|name| self.describe_topic(name).ok())
            .collect()
    }

    pub(crate) fn delete_topic(&mut self, name: &TopicName) -> Result<(), Error> {
        let topic = self
            .topics
            .remove(name)
            .ok_or_else(|| Error::topic_not_found(name.as_str()))?;
        for subscription in &topic.subscriptions {
            if let Some(removed) = self.subscriptions.remove(subscription) {
                removed.notify.notify_waiters();
            }
        }
        self.room.notify_waiters();
        Ok(())
    }

    pub(crate) fn delete_subscription(&mut self, name: &SubscriptionName) -> Result<(), Error> {
        let removed = self
            .subscriptions
            .remove(name)
            .ok_or_else(|| Error::subscription_not_found(name.as_str()))?;
        if let Some(topic) = self.topics.get_mut(&removed.config.topic) {
            topic.subscriptions.remove(name);
        }
        removed.notify.notify_waiters();
        self.room.notify_waiters();
        Ok(())
    }

    /// The subscription, or `NotFound`.
    pub(crate) fn subscription(
        &mut self,
        name: &SubscriptionName,
    ) -> Result<&mut Subscription, Error> {
        self.subscriptions
            .get_mut(name)
            .ok_or_else(|| Error::subscription_not_found(name.as_str()))
    }

    /// The subscription if it is still incarnation `id`, or `NotFound`.
    pub(crate) fn incarnation(
        &mut self,
        name: &SubscriptionName,
        id: u64,
    ) -> Result<&mut Subscription, Error> {
        match self.subscriptions.get_mut(name) {
            Some(subscription) if subscription.id == id => Ok(subscription),
            _ => Err(Error::subscription_not_found(name.as_str())),
        }
    }

    /// Publishes one message (already validated): backlog bound, dedup, log, fan-out.
    pub(crate) fn publish(
        &mut self,
        name: &TopicName,
        mut message: Message,
        now: Instant,
        clock: &Clock,
    ) -> Result<PublishOutcome, Refused> {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| Error::topic_not_found(name.as_str()))?;
        if let Some(bound) = topic.config.backlog_bound {
            if let Some((detail, wait)) = self.refusal(topic, &bound, message.size() as u64) {
                return Err(Refused::Full(Box::new(Full {
                    message,
                    detail,
                    wait,
                })));
            }
        }
        let topic = self
            .topics
            .get_mut(name)
            .ok_or_else(|| Error::topic_not_found(name.as_str()))?;
        if topic.is_duplicate(message.id(), now) {
            return Ok(PublishOutcome::Duplicate);
        }
        message.set_published_at(clock.system_at(now));
        let due = message.deliver_at().and_then(|at| clock.due(now, at));
        let stored = Arc::new(Stored { message, due });
        topic.append(Arc::clone(&stored));
        for subscription_name in &topic.subscriptions {
            let Some(subscription) = self.subscriptions.get_mut(subscription_name) else {
                debug_assert!(false, "a topic lists a missing subscription");
                continue;
            };
            if subscription.matches(&stored.message) {
                subscription.enqueue(Arc::clone(&stored), now);
            }
        }
        Ok(PublishOutcome::Published)
    }
}

impl State {
    /// Why `bound` refuses one more message of `size` bytes on `topic`, and how long the
    /// publisher may wait for room; `None` if it fits. The backlog is the largest over the
    /// topic's subscriptions (in messages and in bytes, each on its own), so the slowest
    /// subscription decides; a topic without subscriptions has none. Every subscription
    /// counts, whether or not its filter would select the message.
    fn refusal(
        &self,
        topic: &Topic,
        bound: &BacklogBound,
        size: u64,
    ) -> Option<(String, Option<Duration>)> {
        let backlogs = topic.subscriptions.iter().filter_map(|name| {
            let subscription = self.subscriptions.get(name)?;
            Some((name, subscription.backlog()))
        });
        // The first by name on a tie.
        let mut messages: Option<(&SubscriptionName, u64)> = None;
        let mut bytes: Option<(&SubscriptionName, u64)> = None;
        for (name, (m, b)) in backlogs {
            if messages.is_none_or(|(_, max)| m > max) {
                messages = Some((name, m));
            }
            if bytes.is_none_or(|(_, max)| b > max) {
                bytes = Some((name, b));
            }
        }
        let block = match bound.overflow {
            Overflow::Block { timeout } => Some(timeout),
            _ => None,
        };
        let checks = [
            (bound.max_messages, messages, 1, "messages"),
            (bound.max_bytes, bytes, size, "bytes"),
        ];
        for (max, slowest, incoming, unit) in checks {
            let (Some(max), Some((slowest, backlog))) = (max, slowest) else {
                continue;
            };
            if backlog.saturating_add(incoming) <= max {
                continue;
            }
            let fits_alone = incoming <= max;
            let mut detail = format!(
                "its backlog of {backlog} {unit} plus this publish would exceed the bound of \
                 {max} {unit}; the slowest subscription is `{slowest}`"
            );
            if !fits_alone {
                detail.push_str(" (the message alone exceeds the bound: waiting cannot help)");
            }
            return Some((detail, block.filter(|_| fits_alone)));
        }
        None
    }
}

fn conflict(kind: ObjectKind, name: &str, difference: String) -> Error {
    Error::Conflict {
        kind,
        name: name.to_owned(),
        difference,
    }
}
