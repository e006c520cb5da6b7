//! What a backend does natively, emulates, or cannot do. The conformance suite tests the
//! level each backend declares; the capability table in `docs/` is generated from these.

use std::time::Duration;

/// How a backend provides a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// The broker does it.
    Native,
    /// Sluice does it on top of the broker.
    Emulated,
    /// Not available.
    Unsupported,
}

impl Support {
    /// Whether the feature is available at all.
    pub fn is_available(self) -> bool {
        self != Support::Unsupported
    }
}

/// The ordering guarantee for messages sharing an ordering key, per subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OrderingLevel {
    /// No ordering.
    None,
    /// Publish order, but a message waiting for retry may be overtaken by later ones.
    UntilRetry,
    /// Publish order, one in flight per key; a key is held while its message waits for retry.
    Strict,
}

/// What a backend can do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Backend name (`memory`, `embedded`, `rabbitmq`, …).
    pub backend: &'static str,
    /// Delayed and scheduled publish.
    pub delay: Support,
    /// Longest delay (publish or retry); `None` means unbounded.
    pub max_delay: Option<Duration>,
    /// Ordering guarantee for ordering keys.
    pub ordering: OrderingLevel,
    /// Dedup window on publish.
    pub dedup_window: Support,
    /// Longest dedup window; `None` means unbounded.
    pub max_dedup_window: Option<Duration>,
    /// The only dedup window the backend offers, where it cannot be chosen (SQS FIFO: always
    /// 5 minutes). Ensuring a topic with another window fails with
    /// [`Error::Unsupported`](crate::Error::Unsupported). `None`: any window up to
    /// [`max_dedup_window`](Self::max_dedup_window).
    pub fixed_dedup_window: Option<Duration>,
    /// Topic backlog bounds ([`TopicConfig::backlog_bound`](crate::TopicConfig)) with both
    /// overflow policies, `block` and `reject`. Where unsupported, ensuring a topic with a
    /// bound fails with [`Error::Unsupported`](crate::Error::Unsupported).
    pub backlog_bounds: Support,
    /// Start positions `earliest` and `at` (replay).
    pub replay: bool,
    /// Routing-key filters.
    pub filter: Support,
    /// Whether `release` increases the next delivery's `attempt` (SQS receive count).
    pub release_counts_as_attempt: bool,
    /// Whether topics, subscriptions and messages survive a broker restart.
    pub survives_restart: bool,
    /// Whether clients reconnect on their own after a connection loss (false for in-process
    /// backends, which have no connection).
    pub reconnects: bool,
    /// Largest message (payload plus headers and keys), in bytes.
    pub max_message_size: usize,
    /// Largest batch for publish and receive.
    pub max_batch: usize,
    /// Smallest granularity of leases and delays (SQS counts whole seconds).
    pub time_granularity: Duration,
    /// Global rate limits (`RateLimit::global`): `Native` where the backend keeps the buckets
    /// itself (`Subscriber::limiter`), `Emulated` where the worker is given a store (Redis, PostgreSQL, SQLite).
    pub global_rate_limits: Support,
}

impl Capabilities {
    /// Capabilities of a backend that does everything natively and exactly; backends start
    /// from this and switch off what they lack.
    pub fn full(backend: &'static str) -> Self {
        Self {
            backend,
            delay: Support::Native,
            max_delay: None,
            ordering: OrderingLevel::Strict,
            dedup_window: Support::Native,
            max_dedup_window: None,
            fixed_dedup_window: None,
            backlog_bounds: Support::Native,
            replay: true,
            filter: Support::Native,
            release_counts_as_attempt: false,
            survives_restart: true,
            reconnects: true,
            max_message_size: 1024 * 1024,
            max_batch: 1000,
            time_granularity: Duration::from_millis(1),
            global_rate_limits: Support::Native,
        }
    }
}
