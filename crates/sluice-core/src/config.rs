//! Configuration of topics and subscriptions, as ensured on a backend.
//!
//! `ensure_*` is idempotent: ensuring an object that exists with the same configuration does
//! nothing; with another configuration it fails with [`Error::Conflict`](crate::Error),
//! naming the field that differs (see [`TopicConfig::difference`]).

use std::time::{Duration, SystemTime};

use crate::filter::Filter;
use crate::name::TopicName;

/// Configuration of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TopicConfig {
    /// Dedup window: a publish whose id was already published to this topic within the window
    /// is accepted and dropped. `None` disables it.
    pub dedup_window: Option<Duration>,
}

impl TopicConfig {
    /// Sets the dedup window.
    #[must_use]
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window);
        self
    }

    /// The first difference between an existing configuration (`self`) and a requested one,
    /// as `field: existing X, requested Y`.
    pub fn difference(&self, requested: &TopicConfig) -> Option<String> {
        (self.dedup_window != requested.dedup_window).then(|| {
            format!(
                "dedup_window: existing {:?}, requested {:?}",
                self.dedup_window, requested.dedup_window
            )
        })
    }
}

/// Where a new subscription starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// Messages published after the subscription was created (pinned at creation, so nothing
    /// published after `ensure_subscription` returns is missed).
    #[default]
    Latest,
    /// Every message the topic still retains (replay).
    Earliest,
    /// Messages published at or after this time.
    At(SystemTime),
}

/// Default lease: how long a delivery is reserved for its consumer.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default max attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default prefetch.
pub const DEFAULT_PREFETCH: u32 = 64;

/// Configuration of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionConfig {
    /// The topic it reads.
    pub topic: TopicName,
    /// Routing-key filter; `None` receives every message.
    pub filter: Option<Filter>,
    /// Where it starts (used only when it is created).
    pub start: StartPosition,
    /// How long a delivery is reserved before it is delivered again (30 s by default).
    pub lease: Duration,
    /// Deliveries arriving with `attempt > max_attempts` are dead-lettered before any handler
    /// runs (5 by default).
    pub max_attempts: u32,
    /// Whether the subscription has a dead-letter queue (on by default). Without one,
    /// `dead_letter` discards the message after logging it.
    pub dead_letter_queue: bool,
    /// How many deliveries one subscriber may hold unsettled (64 by default): set it at least
    /// to the worker's concurrency. A consumer-side setting: ensuring the subscription with
    /// another prefetch updates it and is not a conflict.
    pub prefetch: u32,
}

impl SubscriptionConfig {
    /// A subscription of `topic` with the defaults.
    pub fn new(topic: TopicName) -> Self {
        Self {
            topic,
            filter: None,
            start: StartPosition::Latest,
            lease: DEFAULT_LEASE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dead_letter_queue: true,
            prefetch: DEFAULT_PREFETCH,
        }
    }
    /// Sets the filter.
    #[must_use]
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }
    /// Sets the start position.
    #[must_use]
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }
    /// Sets the lease.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Sets max attempts (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }
    /// Turns the dead-letter queue on or off.
    #[must_use]
    pub fn dead_letter_queue(mut self, enabled: bool) -> Self {
        self.dead_letter_queue = enabled;
        self
    }
    /// Sets the prefetch.
    #[must_use]
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The first difference between an existing configuration (`self`) and a requested one,
    /// as `field: existing X, requested Y`. The start position is not compared (it only
    /// matters at creation), nor is the prefetch (a consumer-side setting that `ensure`
    /// updates).
    pub fn difference(&self, requested: &SubscriptionConfig) -> Option<String> {
        fn diff<T: PartialEq + std::fmt::Debug>(field: &str, a: &T, b: &T) -> Option<String> {
            (a != b).then(|| format!("{field}: existing {a:?}, requested {b:?}"))
        }
        diff("topic", &self.topic.as_str(), &requested.topic.as_str())
            .or_else(|| {
                diff(
                    "filter",
                    &self.filter.as_ref().map(Filter::as_str),
                    &requested.filter.as_ref().map(Filter::as_str),
                )
            })
            .or_else(|| diff("lease", &self.lease, &requested.lease))
            .or_else(|| diff("max_attempts", &self.max_attempts, &requested.max_attempts))
            .or_else(|| {
                diff(
                    "dead_letter_queue",
                    &self.dead_letter_queue,
                    &requested.dead_letter_queue,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_names_the_field() {
        let t = TopicName::new("orders").unwrap();
        let a = SubscriptionConfig::new(t.clone());
        assert_eq!(a.difference(&a.clone()), None);
        let b = a.clone().max_attempts(9);
        assert_eq!(
            a.difference(&b).unwrap(),
            "max_attempts: existing 5, requested 9"
        );
        let c = a.clone().start(StartPosition::Earliest);
        assert_eq!(
            a.difference(&c),
            None,
            "start position only matters at creation"
        );
        let t1 = TopicConfig::default();
        let t2 = TopicConfig::default().dedup_window(Duration::from_secs(60));
        assert!(t1.difference(&t2).unwrap().starts_with("dedup_window"));
    }
}
