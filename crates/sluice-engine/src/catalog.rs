//! The catalog: every topic and subscription with its options, stored as one JSON document
//! replaced atomically on each topology change (see `docs/engine-format.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Catalog format version (inside the JSON document).
pub const CATALOG_VERSION: u32 = 1;

/// What a publish does when a topic's backlog bound is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Wait up to `timeout_ms` for consumers to make room, then fail with `BacklogFull`.
    Block {
        /// How long a publisher may wait.
        timeout_ms: u64,
    },
    /// Fail at once with `BacklogFull`.
    Reject,
}

/// A bound on a topic's backlog: messages between the slowest subscription's low watermark
/// and the end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogBound {
    /// At most this many messages.
    pub max_messages: Option<u64>,
    /// At most this many bytes of log.
    pub max_bytes: Option<u64>,
    /// What happens when it is reached.
    pub overflow: Overflow,
}

/// Options of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TopicOptions {
    /// Dedup window: a publish whose id was published within it is dropped.
    pub dedup_window_ms: Option<u64>,
    /// Handled messages older than this are deleted (whole segments).
    pub retention_age_ms: Option<u64>,
    /// Handled messages beyond this many bytes of log are deleted (whole segments).
    pub retention_bytes: Option<u64>,
    /// Backlog bound.
    pub backlog: Option<BacklogBound>,
    /// Per-key ordering asked for (recorded only: the engine orders every topic's keys).
    #[serde(default)]
    pub ordered: bool,
}

impl TopicOptions {
    /// Sets the dedup window.
    #[must_use]
    pub fn dedup_window_ms(mut self, window: Option<u64>) -> Self {
        self.dedup_window_ms = window;
        self
    }
    /// Records that per-key ordering was asked for.
    #[must_use]
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }
    /// Sets the backlog bound.
    #[must_use]
    pub fn backlog(mut self, bound: Option<BacklogBound>) -> Self {
        self.backlog = bound;
        self
    }
    /// Sets retention.
    #[must_use]
    pub fn retention(mut self, age_ms: Option<u64>, bytes: Option<u64>) -> Self {
        self.retention_age_ms = age_ms;
        self.retention_bytes = bytes;
        self
    }
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// After the last message published before it was created.
    #[default]
    Latest,
    /// At the first message the topic retains.
    Earliest,
    /// At the first message published at or after this time (ms since the epoch).
    At(u64),
}

/// Options of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubscriptionOptions {
    /// Its topic.
    pub topic: String,
    /// Routing-key pattern; `None` matches everything.
    pub filter: Option<String>,
    /// Where it started (as asked at creation).
    pub start: Start,
    /// Lease of a delivery.
    pub lease_ms: u64,
    /// Max attempts (enforced by the runtime; kept for describe).
    pub max_attempts: u32,
    /// Whether dead-lettered messages are kept in a DLQ.
    pub dead_letter_queue: bool,
    /// Unsettled deliveries one holder may have.
    pub prefetch: u32,
}

impl SubscriptionOptions {
    /// Options with Sluice's defaults (30 s lease, 5 attempts, a DLQ, prefetch 64).
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            filter: None,
            start: Start::Latest,
            lease_ms: 30_000,
            max_attempts: 5,
            dead_letter_queue: true,
            prefetch: 64,
        }
    }
}

/// A subscription in the catalog: its options and the offset it was created at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEntry {
    /// Options.
    pub options: SubscriptionOptions,
    /// The topic offset its state starts from (resolved from `start` at creation).
    pub start_offset: u64,
}

/// Every topic and subscription.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Format version of this document.
    pub version: u32,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicOptions>,
    /// Subscriptions by name.
    pub subscriptions: BTreeMap<String, SubscriptionEntry>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self {
            version: CATALOG_VERSION,
            ..Self::default()
        }
    }
    /// Encodes the catalog.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("the catalog always serializes")
    }
    /// Decodes a catalog, refusing another version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let catalog: Catalog =
            serde_json::from_slice(bytes).map_err(|e| format!("catalog is not valid: {e}"))?;
        if catalog.version != CATALOG_VERSION {
            return Err(format!(
                "catalog version {} found; this build of Sluice reads version {CATALOG_VERSION}",
                catalog.version
            ));
        }
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_round_trips_and_refuses_another_version() {
        let mut c = Catalog::new();
        c.topics.insert(
            "orders".into(),
            TopicOptions::default()
                .dedup_window_ms(Some(60_000))
                .backlog(Some(BacklogBound {
                    max_messages: Some(10),
                    max_bytes: None,
                    overflow: Overflow::Reject,
                })),
        );
        c.subscriptions.insert(
            "billing".into(),
            SubscriptionEntry {
                options: SubscriptionOptions::new("orders"),
                start_offset: 7,
            },
        );
        assert_eq!(Catalog::from_bytes(&c.to_bytes()).unwrap(), c);
        let mut other = c.clone();
        other.version = 2;
        let err = Catalog::from_bytes(&other.to_bytes()).unwrap_err();
        assert!(err.contains("version 2 found"), "{err}");
    }
}
