//! Physical names on Kafka and the delay tiers.
//!
//! | object | Kafka | example (namespace `dev`) |
//! |---|---|---|
//! | topic | topic | `dev.orders` |
//! | its delay tiers | topics | `dev.orders.delay.10s` |
//! | its delay mover | consumer group | `dev.orders.delay` |
//! | subscription | consumer group | `dev.billing` |
//! | its retry tiers | topics | `dev.billing.retry.1m` |
//! | its DLQ | topic (1 partition) | `dev.billing.dlq` |
//! | its DLQ's read position | consumer group | `dev.billing.dlq` |
//! | the catalog | topic (1 partition) | `dev._sluice.catalog` |
//!
//! Consumer groups and topics are separate name spaces in Kafka. Logical names never contain
//! `.`, so none of these collide.

use std::time::Duration;

use sluice_core::{Naming, SubscriptionName, TopicName};

/// The tiers records wait in before they are due (retries and delayed publishes). A record
/// goes to the longest tier not longer than its delay and waits there until its own due time
/// (a header): a tier's consumer pauses its partition while the head is not due, so a record
/// is never handed out early, and is at most a tier's span late when a record with a longer
/// delay of the same tier is ahead of it.
pub const TIERS: [Duration; 8] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(24 * 3600),
    Duration::from_secs(3 * 24 * 3600),
];

/// The longest delay (publish or retry): 7 days, the default retention of a Kafka topic.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The tier a delay waits in: the longest tier not longer than `delay` (the shortest for
/// delays under a second).
pub fn tier_for(delay: Duration) -> Duration {
    TIERS
        .iter()
        .copied()
        .rev()
        .find(|tier| *tier <= delay)
        .unwrap_or(TIERS[0])
}

/// The physical names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    naming: Naming,
}

impl Names {
    pub(crate) fn new(naming: Naming) -> Self {
        Self { naming }
    }

    pub(crate) fn naming(&self) -> &Naming {
        &self.naming
    }

    pub(crate) fn topic(&self, topic: &TopicName) -> String {
        self.naming.topic(topic)
    }

    pub(crate) fn delay_tiers(&self, topic: &TopicName) -> Vec<String> {
        TIERS
            .iter()
            .map(|tier| self.naming.delay_tier(topic, *tier))
            .collect()
    }

    pub(crate) fn delay_tier(&self, topic: &TopicName, delay: Duration) -> String {
        self.naming.delay_tier(topic, tier_for(delay))
    }

    pub(crate) fn mover_group(&self, topic: &TopicName) -> String {
        format!("{}.delay", self.naming.topic(topic))
    }

    pub(crate) fn group(&self, subscription: &SubscriptionName) -> String {
        self.naming.subscription(subscription)
    }

    pub(crate) fn retry_tiers(&self, subscription: &SubscriptionName) -> Vec<String> {
        TIERS
            .iter()
            .map(|tier| self.naming.retry_tier(subscription, *tier))
            .collect()
    }

    pub(crate) fn retry_tier(&self, subscription: &SubscriptionName, delay: Duration) -> String {
        self.naming.retry_tier(subscription, tier_for(delay))
    }

    pub(crate) fn dlq(&self, subscription: &SubscriptionName) -> String {
        self.naming.dead_letter(subscription)
    }

    pub(crate) fn catalog(&self) -> String {
        let reserved = TopicName::new("_sluice").expect("a valid name");
        format!("{}.catalog", self.naming.topic(&reserved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_waits_in_the_longest_tier_not_longer_than_it() {
        assert_eq!(tier_for(Duration::ZERO), TIERS[0]);
        assert_eq!(tier_for(Duration::from_millis(900)), TIERS[0]);
        assert_eq!(tier_for(Duration::from_secs(1)), TIERS[0]);
        assert_eq!(tier_for(Duration::from_secs(59)), Duration::from_secs(10));
        assert_eq!(tier_for(MAX_DELAY), TIERS[7]);
    }

    #[test]
    fn names_keep_objects_apart() {
        let names = Names::new(Naming::new(Some(
            sluice_core::Namespace::new("dev").unwrap(),
        )));
        let topic = TopicName::new("orders").unwrap();
        let sub = SubscriptionName::new("billing").unwrap();
        assert_eq!(names.topic(&topic), "dev.orders");
        assert_eq!(
            names.delay_tier(&topic, Duration::from_secs(15)),
            "dev.orders.delay.10s"
        );
        assert_eq!(names.mover_group(&topic), "dev.orders.delay");
        assert_eq!(names.group(&sub), "dev.billing");
        assert_eq!(
            names.retry_tier(&sub, Duration::from_secs(90)),
            "dev.billing.retry.1m"
        );
        assert_eq!(names.dlq(&sub), "dev.billing.dlq");
        assert_eq!(names.catalog(), "dev._sluice.catalog");
    }
}
