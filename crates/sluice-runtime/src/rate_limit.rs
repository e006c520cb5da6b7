//! Rate limit: a token bucket the worker draws from *before pulling*, so a limited
//! subscription leaves its backlog in the broker (load levelling) instead of holding it in
//! memory. Tokens refill continuously at `rate` per second up to `burst`.
//!
//! A limit is this worker's own ([`RateLimit::per_second`], tokio's clock), or shared by every
//! worker that names it, in any process ([`RateLimit::global`]): its bucket then lives in a
//! [`LimiterStore`] — the backend's own where it has one (the embedded engine; `sluice serve`,
//! which hands out tokens to its clients), else the one given with
//! `WorkerBuilder::limiter` (Redis, for RabbitMQ, SQS and Kafka).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::limit::{LimiterStore, Rate};
use tokio::time::Instant;

/// A rate limit of `per_second` messages, allowing bursts of `burst`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Largest burst (bucket size), at least 1.
    pub burst: u32,
    /// The name every worker sharing this limit gives it; `None`: this worker's own.
    pub global: Option<String>,
}

impl RateLimit {
    /// `per_second` messages per second, bursts of up to one second's worth (at least 1).
    ///
    /// # Panics
    /// If `per_second` is not a finite number above zero (a configuration error, caught at
    /// start-up rather than as a worker that silently never pulls).
    pub fn per_second(per_second: f64) -> Self {
        assert!(
            per_second.is_finite() && per_second > 0.0,
            "a rate limit must be a finite number of messages per second above zero, got {per_second}"
        );
        Self {
            per_second,
            burst: (per_second.ceil() as u32).max(1),
            global: None,
        }
    }

    /// `per_second` messages per second across every worker that names this limit `name`, in
    /// any process: `RateLimit::global("stripe", 100.0)` on five replicas is 100/s in all,
    /// not 500/s. Its bucket lives in the backend's limiter (the embedded engine, `sluice
    /// serve`) or the one given with `WorkerBuilder::limiter`; the burst is one second's
    /// worth unless set.
    ///
    /// Every worker naming a limit must give it the same rate and burst: each take refills
    /// the bucket at the rate it names, so replicas disagreeing (a rolling configuration
    /// change) get a rate between theirs while they do.
    ///
    /// # Panics
    /// As [`per_second`](Self::per_second), and if `name` is not 1 to 200 bytes.
    pub fn global(name: impl Into<String>, per_second: f64) -> Self {
        let name = name.into();
        assert!(
            !name.is_empty() && name.len() <= 200,
            "a global rate limit's name is 1 to 200 bytes, got {} bytes",
            name.len()
        );
        Self {
            global: Some(name),
            ..Self::per_second(per_second)
        }
    }
    /// The same limit with another burst.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }
}

#[cfg(test)]
#[test]
#[should_panic(expected = "above zero")]
fn a_zero_rate_is_refused_at_construction() {
    let _ = RateLimit::per_second(0.0);
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// What enforces a [`RateLimit`] in a worker: its own bucket, or a share of a global one.
pub(crate) enum Limiter {
    /// This worker's own bucket.
    Local(TokenBucket),
    /// A bucket in a store every worker naming it shares.
    Shared(SharedBucket),
}

impl Limiter {
    /// The limiter of `limit`; a global one takes its bucket from `store`.
    ///
    /// # Panics
    /// A global limit without a store: it would silently become a per-process one, the very
    /// thing it exists to prevent.
    pub(crate) fn new(limit: RateLimit, store: Option<Arc<dyn LimiterStore>>) -> Self {
        let Some(name) = limit.global.clone() else {
            return Limiter::Local(TokenBucket::new(limit));
        };
        let store = store.unwrap_or_else(|| {
            panic!(
                "RateLimit::global(\"{name}\") needs a limiter every worker sharing it reaches: this \
                 backend has none of its own (the embedded engine and sluice:// have); give one \
                 with WorkerBuilder::limiter (sluice-redis's RedisStore)"
            )
        });
        Limiter::Shared(SharedBucket {
            store,
            name,
            rate: Rate {
                per_second: limit.per_second,
                burst: limit.burst.max(1),
            },
            unused: AtomicU32::new(0),
        })
    }

    /// Takes between 1 and `want` tokens, waiting until at least one is available.
    pub(crate) async fn acquire(&self, want: u32) -> u32 {
        match self {
            Limiter::Local(bucket) => bucket.acquire(want).await,
            Limiter::Shared(shared) => shared.acquire(want).await,
        }
    }

    /// Gives back tokens taken but not used (fewer deliveries than asked for).
    pub(crate) fn give_back(&self, unused: u32) {
        match self {
            Limiter::Local(bucket) => bucket.give_back(unused),
            // Returned with the next take: one round trip, not two.
            Limiter::Shared(shared) => {
                shared.unused.fetch_add(unused, Ordering::Relaxed);
            }
        }
    }
}

/// The longest a worker waits before asking a shared limiter again.
const MAX_LIMITER_WAIT: Duration = Duration::from_secs(1);

/// A worker's side of a global limit.
pub(crate) struct SharedBucket {
    store: Arc<dyn LimiterStore>,
    name: String,
    rate: Rate,
    /// Tokens taken and not used, returned with the next take.
    unused: AtomicU32,
}

impl SharedBucket {
    async fn acquire(&self, want: u32) -> u32 {
        // A worker never needs more than a million at once (the server refuses more).
        let want = want.clamp(1, 1_000_000);
        let mut failures = 0u32;
        loop {
            let back = self.unused.swap(0, Ordering::Relaxed);
            let wait = match self.store.take(&self.name, self.rate, back, want).await {
                Ok(grant) if grant.granted > 0 => return grant.granted,
                Ok(grant) => {
                    failures = 0;
                    grant
                        .retry_after
                        .clamp(Duration::from_millis(1), MAX_LIMITER_WAIT)
                }
                Err(err) => {
                    // Not granted, so not spent: keep the tokens to give back for next time.
                    self.unused.fetch_add(back, Ordering::Relaxed);
                    failures += 1;
                    let pause = Duration::from_millis(50 * 2u64.pow(failures.min(5)));
                    tracing::warn!(limit = %self.name, %err, ?pause, "the limiter failed; nothing is pulled until it answers");
                    pause
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// The token bucket enforcing a [`RateLimit`].
pub(crate) struct TokenBucket {
    limit: RateLimit,
    // std Mutex: never held across an .await.
    bucket: Mutex<Bucket>,
}

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let burst = limit.burst.max(1);
        Self {
            limit,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst),
                updated: Instant::now(),
            }),
        }
    }

    /// Takes between 1 and `want` tokens, waiting until at least one is available.
    pub(crate) async fn acquire(&self, want: u32) -> u32 {
        loop {
            let wait = {
                let mut b = self.bucket.lock().expect("rate limiter poisoned");
                let now = Instant::now();
                let elapsed = now.duration_since(b.updated).as_secs_f64();
                b.tokens = (b.tokens + elapsed * self.limit.per_second)
                    .min(f64::from(self.limit.burst.max(1)));
                b.updated = now;
                if b.tokens >= 1.0 {
                    let take = (b.tokens.floor() as u32).min(want.max(1));
                    b.tokens -= f64::from(take);
                    return take;
                }
                Duration::from_secs_f64((1.0 - b.tokens) / self.limit.per_second.max(1e-9))
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Gives back tokens taken but not used (fewer deliveries than asked for).
    pub(crate) fn give_back(&self, unused: u32) {
        let mut b = self.bucket.lock().expect("rate limiter poisoned");
        b.tokens = (b.tokens + f64::from(unused)).min(f64::from(self.limit.burst.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_grants_the_burst_then_the_sustained_rate() {
        let bucket = TokenBucket::new(RateLimit::per_second(10.0));
        let start = Instant::now();
        assert_eq!(
            bucket.acquire(100).await,
            10,
            "a full bucket grants the burst"
        );
        let mut granted = 0;
        while granted < 20 {
            granted += bucket.acquire(100).await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2100),
            "20 more tokens at 10/s took {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unused_tokens_are_given_back() {
        let bucket = TokenBucket::new(RateLimit::per_second(5.0));
        assert_eq!(bucket.acquire(5).await, 5);
        bucket.give_back(3);
        assert_eq!(bucket.acquire(5).await, 3);
    }
}
