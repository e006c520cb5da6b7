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
    /// Backlog bound: caps what waits in the topic for its slowest subscription, and says
    /// what a publish past the cap does. `None` (the default) leaves the backlog unbounded.
    /// Available where [`Capabilities::backlog_bounds`](crate::Capabilities) says so.
    pub backlog_bound: Option<BacklogBound>,
    /// Whether messages sharing an ordering key must reach each subscription in publish order
    /// (off by default). Backends that order every topic anyway (memory, embedded, Kafka's
    /// partition key) keep order either way and only record it; on SQS + SNS it makes the
    /// topic and its queues FIFO, which costs throughput, so it is asked for per topic. Read
    /// [`Capabilities::ordering`](crate::Capabilities) for the level a backend gives.
    pub ordered: bool,
}

impl TopicConfig {
    /// Sets the dedup window.
    #[must_use]
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window);
        self
    }

    /// Sets the backlog bound.
    #[must_use]
    pub fn backlog_bound(mut self, bound: BacklogBound) -> Self {
        self.backlog_bound = Some(bound);
        self
    }

    /// Asks for per-key ordering (see [`ordered`](Self::ordered)).
    #[must_use]
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// The first difference between an existing configuration (`self`) and a requested one,
    /// as `field: existing X, requested Y`.
    pub fn difference(&self, requested: &TopicConfig) -> Option<String> {
        diff("dedup_window", &self.dedup_window, &requested.dedup_window)
            .or_else(|| {
                diff(
                    "backlog_bound",
                    &self.backlog_bound,
                    &requested.backlog_bound,
                )
            })
            .or_else(|| diff("ordered", &self.ordered, &requested.ordered))
    }
}

/// A bound on a topic's backlog: the messages published to the topic that its slowest
/// subscription has not settled yet (acked or dead-lettered). A publish that would take the
/// backlog past a limit is refused with [`Error::BacklogFull`](crate::Error::BacklogFull) at
/// once ([`Overflow::Reject`]), or waits for consumers to make room ([`Overflow::Block`]).
///
/// How each backend counts (what "settled" and "bytes" mean exactly) is written on the
/// backend; a topic without subscriptions has no backlog. A bound with neither limit set
/// refuses nothing.
///
/// ```
/// use std::time::Duration;
/// use sluice_core::config::{BacklogBound, Overflow, TopicConfig};
///
/// let config = TopicConfig::default().backlog_bound(
///     BacklogBound::new(Overflow::Block { timeout: Duration::from_secs(5) })
///         .max_messages(100_000)
///         .max_bytes(1 << 30),
/// );
/// assert_eq!(config.backlog_bound.unwrap().max_messages, Some(100_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BacklogBound {
    /// At most this many messages wait.
    pub max_messages: Option<u64>,
    /// At most this many bytes wait (as the backend measures a message: payload, headers and
    /// keys, or its stored frame).
    pub max_bytes: Option<u64>,
    /// What a publish past a limit does.
    pub overflow: Overflow,
}

impl BacklogBound {
    /// A bound with this overflow policy and no limit yet: set one with
    /// [`max_messages`](Self::max_messages) or [`max_bytes`](Self::max_bytes).
    pub fn new(overflow: Overflow) -> Self {
        Self {
            max_messages: None,
            max_bytes: None,
            overflow,
        }
    }

    /// Caps the backlog at `max` messages.
    #[must_use]
    pub fn max_messages(mut self, max: u64) -> Self {
        self.max_messages = Some(max);
        self
    }

    /// Caps the backlog at `max` bytes.
    #[must_use]
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = Some(max);
        self
    }
}

/// What a publish does when it would take a topic's backlog past its [`BacklogBound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Wait up to `timeout` for consumers to make room (without blocking a thread), then
    /// fail with [`Error::BacklogFull`](crate::Error::BacklogFull). A publish larger than
    /// the bound by itself fails at once: waiting cannot help.
    Block {
        /// How long a publish may wait for room.
        timeout: Duration,
    },
    /// Fail at once with [`Error::BacklogFull`](crate::Error::BacklogFull).
    Reject,
}

/// `field: existing X, requested Y` if the two differ.
fn diff<T: PartialEq + std::fmt::Debug>(field: &str, a: &T, b: &T) -> Option<String> {
    (a != b).then(|| format!("{field}: existing {a:?}, requested {b:?}"))
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
        let t3 = TopicConfig::default().ordered(true);
        assert_eq!(
            t1.difference(&t3).unwrap(),
            "ordered: existing false, requested true"
        );
    }

    #[test]
    fn difference_names_the_backlog_bound() {
        let bound = BacklogBound::new(Overflow::Reject).max_messages(3);
        let bounded = TopicConfig::default().backlog_bound(bound);
        assert_eq!(bounded.difference(&bounded.clone()), None);
        let unbounded = TopicConfig::default();
        let difference = unbounded.difference(&bounded).unwrap();
        assert!(
            difference.starts_with("backlog_bound: existing None"),
            "{difference}"
        );
        let blocking = TopicConfig::default().backlog_bound(
            BacklogBound::new(Overflow::Block {
                timeout: Duration::from_secs(1),
            })
            .max_messages(3),
        );
        let difference = bounded.difference(&blocking).unwrap();
        assert!(difference.starts_with("backlog_bound:"), "{difference}");
        assert!(difference.contains("Reject") && difference.contains("Block"));
    }
}
