//! Rate limit: a token bucket the worker draws from *before pulling*, so a limited
//! subscription leaves its backlog in the broker (load levelling) instead of holding it in
//! memory. Tokens refill continuously at `rate` per second up to `burst`. Time is tokio's
//! clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A rate limit of `per_second` messages, allowing bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Largest burst (bucket size), at least 1.
    pub burst: u32,
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

/// The token bucket enforcing a [`RateLimit`].
pub(crate) struct TokenBucket {
    limit: RateLimit,
    // std Mutex: never held across an .await.
    bucket: Mutex<Bucket>,
}

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limit.burst.max(1)),
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
