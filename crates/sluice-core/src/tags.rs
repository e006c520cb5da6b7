//! Topic and subscription configurations as flat string maps ("tags"), for backends that keep
//! Sluice's configuration on the broker's own objects (SNS topic and SQS queue tags) or in a
//! catalog of string maps (Kafka's catalog topic), so every process reads the same
//! configuration back.
//!
//! | object | tag | value |
//! |---|---|---|
//! | topic | `sluice:ordered` | `true` / `false` |
//! | topic | `sluice:dedup-window-ms` | the window, absent without one |
//! | subscription | `sluice:topic` | the topic's logical name |
//! | subscription | `sluice:filter` | the routing-key pattern, absent without one |
//! | subscription | `sluice:lease-ms`, `sluice:max-attempts`, `sluice:prefetch` | numbers |
//! | subscription | `sluice:dlq` | `true` / `false` |
//!
//! Objects without these tags (made by other tools) read as the defaults; the subscription
//! start position is used only at creation and is not kept.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::{SubscriptionConfig, TopicConfig};
use crate::error::Error;
use crate::filter::Filter;
use crate::name::TopicName;

const ORDERED: &str = "sluice:ordered";
const DEDUP_WINDOW_MS: &str = "sluice:dedup-window-ms";
const TOPIC: &str = "sluice:topic";
const FILTER: &str = "sluice:filter";
const LEASE_MS: &str = "sluice:lease-ms";
const MAX_ATTEMPTS: &str = "sluice:max-attempts";
/// The key of the prefetch tag (ensuring a subscription with another prefetch updates it).
pub const PREFETCH: &str = "sluice:prefetch";
const DLQ: &str = "sluice:dlq";

/// The tags of a topic with this configuration.
pub fn topic_tags(config: &TopicConfig) -> Vec<(String, String)> {
    let mut tags = vec![(ORDERED.to_owned(), config.ordered.to_string())];
    if let Some(window) = config.dedup_window {
        tags.push((DEDUP_WINDOW_MS.to_owned(), window.as_millis().to_string()));
    }
    tags
}

/// The configuration a topic's tags describe.
pub fn topic_config(tags: &HashMap<String, String>) -> TopicConfig {
    let mut config = TopicConfig::default().ordered(tags.get(ORDERED).is_some_and(|v| v == "true"));
    if let Some(ms) = tags.get(DEDUP_WINDOW_MS).and_then(|v| v.parse().ok()) {
        config = config.dedup_window(Duration::from_millis(ms));
    }
    config
}

/// The tags of a subscription with this configuration.
pub fn subscription_tags(config: &SubscriptionConfig) -> HashMap<String, String> {
    let mut tags = HashMap::from([
        (TOPIC.to_owned(), config.topic.to_string()),
        (LEASE_MS.to_owned(), config.lease.as_millis().to_string()),
        (MAX_ATTEMPTS.to_owned(), config.max_attempts.to_string()),
        (PREFETCH.to_owned(), config.prefetch.to_string()),
        (DLQ.to_owned(), config.dead_letter_queue.to_string()),
    ]);
    if let Some(filter) = &config.filter {
        tags.insert(FILTER.to_owned(), filter.as_str().to_owned());
    }
    tags
}

/// The configuration a subscription's tags describe; `None` if the object is not a Sluice
/// subscription (no topic tag).
///
/// # Errors
/// A topic or filter tag that is not a valid name or pattern.
pub fn subscription_config(
    tags: &HashMap<String, String>,
) -> Result<Option<SubscriptionConfig>, Error> {
    let Some(topic) = tags.get(TOPIC) else {
        return Ok(None);
    };
    let mut config = SubscriptionConfig::new(TopicName::new(topic.clone())?);
    if let Some(pattern) = tags.get(FILTER) {
        config = config.filter(Filter::new(pattern.clone())?);
    }
    if let Some(ms) = tags.get(LEASE_MS).and_then(|v| v.parse().ok()) {
        config = config.lease(Duration::from_millis(ms));
    }
    if let Some(n) = tags.get(MAX_ATTEMPTS).and_then(|v| v.parse().ok()) {
        config = config.max_attempts(n);
    }
    if let Some(n) = tags.get(PREFETCH).and_then(|v| v.parse().ok()) {
        config = config.prefetch(n);
    }
    if let Some(dlq) = tags.get(DLQ) {
        config = config.dead_letter_queue(dlq == "true");
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_survive_their_tags() {
        let topic = TopicConfig::default()
            .ordered(true)
            .dedup_window(Duration::from_secs(300));
        let tags: HashMap<_, _> = topic_tags(&topic).into_iter().collect();
        assert_eq!(topic_config(&tags), topic);
        assert_eq!(topic_config(&HashMap::new()), TopicConfig::default());

        let sub = SubscriptionConfig::new(TopicName::new("orders").unwrap())
            .filter(Filter::new("eu.#").unwrap())
            .lease(Duration::from_secs(7))
            .max_attempts(9)
            .prefetch(20)
            .dead_letter_queue(false);
        let back = subscription_config(&subscription_tags(&sub))
            .unwrap()
            .unwrap();
        assert_eq!(back, sub);
        assert_eq!(back.prefetch, 20);
        assert!(subscription_config(&HashMap::new()).unwrap().is_none());
    }
}
