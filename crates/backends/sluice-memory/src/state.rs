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

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_core::{
    Error, Message, ObjectKind, PublishOutcome, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicInfo, TopicName,
};
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

    /// Publishes one message (already validated): dedup, log, fan-out.
    pub(crate) fn publish(
        &mut self,
        name: &TopicName,
        mut message: Message,
        now: Instant,
        clock: &Clock,
    ) -> Result<PublishOutcome, Error> {
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

fn conflict(kind: ObjectKind, name: &str, difference: String) -> Error {
    Error::Conflict {
        kind,
        name: name.to_owned(),
        difference,
    }
}
