//! The emulated dedup window: an in-memory claim store, per backend handle.
//!
//! DESIGN §2: claim the id before publishing; a claim still alive means a duplicate; a
//! failed publish drops its claim so the caller can try again. The store is in this
//! process only: two processes publishing the same id are not deduplicated (the
//! capabilities say `Emulated`, and `docs/rabbitmq.md` says how far it reaches).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Claims of `(topic, id)` until their window ends.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    // std Mutex: held for a map lookup, never across an .await.
    claims: Mutex<HashMap<(String, String), Instant>>,
}

impl Claims {
    /// Claims `id` on `topic` for `window`; `false` if a live claim exists (a duplicate).
    pub(crate) fn claim(&self, topic: &str, id: &str, window: Duration) -> bool {
        let now = Instant::now();
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
    pub(crate) fn release(&self, topic: &str, id: &str) {
        let key = (topic.to_owned(), id.to_owned());
        self.claims.lock().expect("claims lock").remove(&key);
    }

    /// Drops every claim of a deleted topic.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.claims
            .lock()
            .expect("claims lock")
            .retain(|(t, _), _| t != topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_id_is_a_duplicate_within_the_window_and_free_after_it_or_a_failed_publish() {
        let claims = Claims::default();
        let window = Duration::from_secs(60);
        assert!(claims.claim("t", "a", window));
        assert!(!claims.claim("t", "a", window), "within the window");
        assert!(claims.claim("other", "a", window), "per topic");
        claims.release("t", "a");
        assert!(claims.claim("t", "a", window), "after a failed publish");
        tokio::time::advance(window + Duration::from_millis(1)).await;
        assert!(claims.claim("t", "a", window), "after the window");
    }
}
