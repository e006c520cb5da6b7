//! Per-key limits: a rate and a number in flight for each key of a subscription (a tenant, a
//! customer, an ordering key), so one key's backlog never holds up the others.
//!
//! A queue is first in, first out: when tenant A floods it, tenant B's messages wait behind
//! A's backlog, whatever A's own limit. A worker with a [`KeyLimit`] takes every delivery it
//! pulls through a gate per key instead:
//!
//! - a key under its limits runs at once;
//! - a key at its limit **parks** the delivery in the worker (its lease kept alive, its
//!   concurrency slot given back, so the worker goes on pulling other keys' messages); the
//!   key's parked deliveries run in the order they arrived as its limits allow;
//! - past `max_parked` deliveries parked in the worker, a key at its limit has the delivery
//!   **deferred** in the broker: retried at the time its key's limit would let it run (one
//!   per key and slot, so it comes back once, in order). A deferral spends one delivery of
//!   the subscription's max attempts (the broker counts it); a delivery on its last attempt is
//!   parked instead, so a deferral never sends a message to the dead-letter queue.
//!
//! A handler whose downstream answers "too many requests" returns
//! [`HandlerError::rate_limited`](crate::HandlerError::rate_limited): its key is parked for
//! that long and the delivery runs again after it, without spending an attempt (a message
//! without a key, or a worker without a key limit, pauses the whole worker instead).
//!
//! A key's rate is this worker's own by default; [`KeyLimit::global`] keeps one bucket per key
//! in the limiter store every worker naming the limit shares (the same store as
//! [`RateLimit::global`](crate::RateLimit::global)). The number in flight is per worker.

use std::fmt;
use std::sync::Arc;

use sluice_core::Message;

/// A function giving a message's key.
pub type KeyFn = Arc<dyn Fn(&Message) -> Option<String> + Send + Sync>;

/// How a delivery's key is found.
#[derive(Clone)]
pub enum KeyOf {
    /// The value of a header (`tenant`).
    Header(String),
    /// The message's ordering key.
    OrderingKey,
    /// A function of the message.
    Fn(KeyFn),
}

impl fmt::Debug for KeyOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOf::Header(name) => f.debug_tuple("Header").field(name).finish(),
            KeyOf::OrderingKey => f.write_str("OrderingKey"),
            KeyOf::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

impl KeyOf {
    /// The key of `message`; `None`: it has none (not limited by key).
    pub fn key(&self, message: &Message) -> Option<String> {
        match self {
            KeyOf::Header(name) => message.header(name).map(str::to_owned),
            KeyOf::OrderingKey => message.ordering_key().map(str::to_owned),
            KeyOf::Fn(f) => f(message),
        }
    }
}

/// Default number of deliveries a worker parks before it defers to the broker.
pub const DEFAULT_MAX_PARKED: usize = 1024;

/// Limits for each key of a subscription: see the [module docs](self).
///
/// ```
/// use sluice_runtime::KeyLimit;
/// // 10 per second and 2 at once for each tenant:
/// let limit = KeyLimit::header("tenant").per_second(10.0).in_flight(2);
/// ```
#[derive(Debug, Clone)]
pub struct KeyLimit {
    pub(crate) key: KeyOf,
    pub(crate) per_second: Option<f64>,
    pub(crate) burst: Option<u32>,
    pub(crate) in_flight: Option<u32>,
    pub(crate) max_parked: usize,
    pub(crate) global: Option<String>,
}

impl KeyLimit {
    /// Keys are the value of header `name`; messages without it are not limited by key.
    pub fn header(name: impl Into<String>) -> Self {
        Self::of(KeyOf::Header(name.into()))
    }

    /// Keys are the ordering key; messages without one are not limited by key.
    pub fn ordering_key() -> Self {
        Self::of(KeyOf::OrderingKey)
    }

    /// Keys are what `key` returns (`None`: not limited by key).
    pub fn by(key: impl Fn(&Message) -> Option<String> + Send + Sync + 'static) -> Self {
        Self::of(KeyOf::Fn(Arc::new(key)))
    }

    fn of(key: KeyOf) -> Self {
        Self {
            key,
            per_second: None,
            burst: None,
            in_flight: None,
            max_parked: DEFAULT_MAX_PARKED,
            global: None,
        }
    }

    /// At most `per_second` deliveries per second for each key, in bursts of up to one
    /// second's worth (at least 1) unless [`burst`](Self::burst) says otherwise.
    ///
    /// # Panics
    /// If `per_second` is not a finite number above zero.
    #[must_use]
    pub fn per_second(mut self, per_second: f64) -> Self {
        assert!(
            per_second.is_finite() && per_second > 0.0,
            "a key's rate must be a finite number of messages per second above zero, got {per_second}"
        );
        self.per_second = Some(per_second);
        self
    }

    /// The largest burst of each key (at least 1).
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst.max(1));
        self
    }

    /// At most `n` deliveries of each key handled at once by this worker (at least 1).
    #[must_use]
    pub fn in_flight(mut self, n: u32) -> Self {
        self.in_flight = Some(n.max(1));
        self
    }

    /// How many deliveries the worker parks (holds with their leases kept alive) before it
    /// defers the next ones of a key at its limit to the broker (1024 by default; 0: always
    /// defer). Parked deliveries count towards the subscription's prefetch, so a worker parks
    /// at most its prefetch less its concurrency (64 − 16 = 48 by default): raise the
    /// subscription's prefetch to park more.
    #[must_use]
    pub fn max_parked(mut self, n: usize) -> Self {
        self.max_parked = n;
        self
    }

    /// Every worker naming this limit `name`, in any process, shares each key's bucket (kept
    /// in the backend's limiter, or the one given with `WorkerBuilder::limiter`): tenant A's
    /// 10/s is 10/s across five replicas, not 50/s.
    ///
    /// # Panics
    /// If `name` is not 1 to 100 bytes.
    #[must_use]
    pub fn global(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(
            !name.is_empty() && name.len() <= 100,
            "a global key limit's name is 1 to 100 bytes, got {} bytes",
            name.len()
        );
        self.global = Some(name);
        self
    }

    pub(crate) fn burst_or_default(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            self.per_second
                .map_or(1, |rate| (rate.ceil() as u32).max(1))
        })
    }
}
