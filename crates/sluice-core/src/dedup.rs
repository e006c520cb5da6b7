//! The emulated dedup window: the [`DedupStore`] contract and [`Claims`], its in-memory
//! store, for backends whose broker has no dedup window (RabbitMQ, Kafka) or cannot say that
//! it dropped a duplicate (SQS FIFO).
//!
//! DESIGN §2: claim the id before publishing; a claim still alive means a duplicate; a
//! failed publish drops its claim so the caller can try again. [`Claims`] lives in this
//! process only: two processes publishing the same id are not deduplicated by it. A durable
//! store shared by every publisher (Redis, PostgreSQL, SQLite: `sluice-redis`, `sluice-sql`)
//! makes the window reach across processes and restarts; each backend's options take one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::idempotency::{boxed, BoxFuture};

/// Where an emulated dedup window keeps its claims: `(topic, message id)` until the window
/// ends. Shared by every publisher that must see the same window.
///
/// The publish path is: [`claim`](Self::claim) (a `false` means a live claim exists, so the
/// publish is a duplicate and is dropped), publish, and on a failed publish
/// [`release`](Self::release) so the caller can try again.
pub trait DedupStore: Send + Sync + 'static {
    /// Claims `id` on `topic` for `window`; `Ok(false)` if a live claim exists (a duplicate).
    fn claim<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Drops the claim of a publish that failed.
    fn release<'a>(&'a self, topic: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Drops every claim of a deleted topic, so a topic created again under its name starts
    /// with an empty window.
    fn forget_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// Claims of `(topic, id)` until their window ends.
#[derive(Debug, Default)]
pub struct Claims {
    // std Mutex: held for a map lookup, never across an .await.
    claims: Mutex<HashMap<(String, String), Instant>>,
}

impl Claims {
    /// Claims `id` on `topic` for `window`; `false` if a live claim exists (a duplicate).
    pub fn claim(&self, topic: &str, id: &str, window: Duration) -> bool {
        self.claim_at(topic, id, window, Instant::now())
    }

    /// [`claim`](Self::claim) with the current time given (for tests).
    pub fn claim_at(&self, topic: &str, id: &str, window: Duration, now: Instant) -> bool {
        let mut claims = self.claims.lock().expect("claims lock");
        if claims.len() > 4096 {
            claims.retain(|_, until| *until > now);
        }
        let key = (topic.to_owned(), id.to_owned());
        match claims.get(&key) {
            Some(until) if *until > now => false,
            _ => {
                claims.insert(key, now + window);
                true
            }
        }
    }

    /// Drops a claim whose publish failed.
    pub fn release(&self, topic: &str, id: &str) {
        let key = (topic.to_owned(), id.to_owned());
        self.claims.lock().expect("claims lock").remove(&key);
    }

    /// Drops every claim of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        self.claims
            .lock()
            .expect("claims lock")
            .retain(|(t, _), _| t != topic);
    }
}

impl DedupStore for Claims {
    fn claim<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let fresh = Claims::claim(self, topic, id, window);
        boxed(async move { Ok(fresh) })
    }

    fn release<'a>(&'a self, topic: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Claims::release(self, topic, id);
        boxed(async { Ok(()) })
    }

    fn forget_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<()>> {
        Claims::forget_topic(self, topic);
        boxed(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_and_free_after_it_or_a_failed_publish() {
        let claims = Claims::default();
        let window = Duration::from_secs(60);
        let start = Instant::now();
        assert!(claims.claim_at("t", "a", window, start));
        assert!(
            !claims.claim_at("t", "a", window, start),
            "within the window"
        );
        assert!(claims.claim_at("other", "a", window, start), "per topic");
        claims.release("t", "a");
        assert!(
            claims.claim_at("t", "a", window, start),
            "after a failed publish"
        );
        let later = start + window + Duration::from_millis(1);
        assert!(claims.claim_at("t", "a", window, later), "after the window");
        claims.forget_topic("t");
        assert!(
            claims.claim_at("t", "a", window, later),
            "after deleting the topic"
        );
    }
}
