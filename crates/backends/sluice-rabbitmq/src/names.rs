//! Physical names and the delay tiers.
//!
//! Every name comes from core's [`Naming`]; the few objects core has no name for (the
//! topic's delay exchange, the topology catalog and its lock) append a dotted suffix to a
//! name `Naming` made. Logical names never contain `.`, so these cannot collide with a
//! topic, a subscription, a DLQ or a tier.
//!
//! Invariant: a delay is rounded *up* to a tier ([`tier_for`]), so a message is never
//! delivered before its time; delays beyond the largest tier are refused.

use std::time::Duration;

use sluice_core::{Naming, SubscriptionName, TopicName};

/// The delay tiers: a retry or delayed publish waits in the queue of the smallest tier at
/// least as long as asked.
pub const TIERS: [Duration; 17] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(300),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(7200),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(12 * 3600),
    Duration::from_secs(24 * 3600),
];

/// The longest delay: the largest tier.
pub const MAX_DELAY: Duration = TIERS[TIERS.len() - 1];

/// The tier a delay waits in: the smallest tier at least `delay` long; `None` beyond
/// [`MAX_DELAY`]. A zero delay has no tier (the caller publishes at once).
pub fn tier_for(delay: Duration) -> Option<Duration> {
    TIERS.iter().copied().find(|tier| *tier >= delay)
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

    /// The topic's durable topic exchange.
    pub(crate) fn exchange(&self, topic: &TopicName) -> String {
        self.naming.topic(topic)
    }

    /// The topic's headers exchange in front of its delay-tier queues.
    pub(crate) fn delay_exchange(&self, topic: &TopicName) -> String {
        format!("{}.delay", self.naming.topic(topic))
    }

    /// The topic's delay-tier queue for `tier`.
    pub(crate) fn delay_queue(&self, topic: &TopicName, tier: Duration) -> String {
        self.naming.delay_tier(topic, tier)
    }

    /// The subscription's quorum queue.
    pub(crate) fn queue(&self, subscription: &SubscriptionName) -> String {
        self.naming.subscription(subscription)
    }

    /// The subscription's dead-letter queue.
    pub(crate) fn dead_letter(&self, subscription: &SubscriptionName) -> String {
        self.naming.dead_letter(subscription)
    }

    /// The subscription's retry-tier queue for `tier`.
    pub(crate) fn retry_queue(&self, subscription: &SubscriptionName, tier: Duration) -> String {
        self.naming.retry_tier(subscription, tier)
    }

    fn sluice(&self) -> String {
        let sluice = SubscriptionName::new("sluice").expect("a valid name");
        self.naming.subscription(&sluice)
    }

    /// The queue holding the topology catalog (one message).
    pub(crate) fn catalog(&self) -> String {
        format!("{}.catalog", self.sluice())
    }

    /// The exclusive queue whose owner may change the catalog.
    pub(crate) fn catalog_lock(&self) -> String {
        format!("{}.catalog-lock", self.sluice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_rounded_up_to_a_tier_and_never_down() {
        assert_eq!(tier_for(Duration::from_millis(1)), Some(TIERS[0]));
        assert_eq!(tier_for(Duration::from_millis(250)), Some(TIERS[0]));
        assert_eq!(
            tier_for(Duration::from_millis(251)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            tier_for(Duration::from_secs(3)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(tier_for(MAX_DELAY), Some(MAX_DELAY));
        assert_eq!(tier_for(MAX_DELAY + Duration::from_millis(1)), None);
        for pair in TIERS.windows(2) {
            assert!(pair[0] < pair[1], "tiers are increasing");
        }
    }

    #[test]
    fn extra_names_cannot_collide_with_logical_ones() {
        let names = Names::new(Naming::new(Some("ci".parse().unwrap())));
        assert_eq!(names.catalog(), "ci.sluice.catalog");
        let topic = TopicName::new("orders").unwrap();
        assert_eq!(names.delay_exchange(&topic), "ci.orders.delay");
        assert_eq!(
            names.delay_queue(&topic, Duration::from_millis(500)),
            "ci.orders.delay.500ms"
        );
    }
}
