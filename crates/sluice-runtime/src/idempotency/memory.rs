//! An in-memory idempotency store, for tests, single-process services and the demo.
//! Durable stores (embedded, Redis, PostgreSQL) implement the same trait.
//!
//! Invariant: an entry is either a live claim (token, expiry) or a done marker (expiry);
//! expired entries are treated as absent and swept every 1024 operations. Time is tokio's
//! clock, so tests run under a paused clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sluice_core::idempotency::{boxed, BoxFuture};
use sluice_core::{Claim, ClaimToken, IdempotencyKey, IdempotencyStore, Result};
use tokio::time::Instant;

enum Entry {
    Claimed { token: ClaimToken, expires: Instant },
    Done { expires: Instant },
}

impl Entry {
    fn expires(&self) -> Instant {
        match self {
            Entry::Claimed { expires, .. } | Entry::Done { expires } => *expires,
        }
    }
}

/// An in-memory [`IdempotencyStore`]: exact, shared by every worker holding it, lost on exit.
#[derive(Default)]
pub struct InMemoryStore {
    // std Mutex: never held across an .await.
    entries: Mutex<HashMap<IdempotencyKey, Entry>>,
    next_token: AtomicU64,
    ops: AtomicU64,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore").finish_non_exhaustive()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_entries<T>(
        &self,
        f: impl FnOnce(&mut HashMap<IdempotencyKey, Entry>, Instant) -> T,
    ) -> T {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("idempotency store poisoned");
        if self.ops.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            entries.retain(|_, e| e.expires() > now);
        }
        f(&mut entries, now)
    }

    /// Number of live entries (claims and done markers).
    pub fn len(&self) -> usize {
        self.with_entries(|e, now| e.values().filter(|v| v.expires() > now).count())
    }

    /// Whether the store holds no live entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IdempotencyStore for InMemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>> {
        let claim = self.with_entries(|entries, now| match entries.get(key) {
            Some(Entry::Done { expires }) if *expires > now => Claim::Done,
            Some(Entry::Claimed { expires, .. }) if *expires > now => Claim::InProgress {
                remaining: *expires - now,
            },
            _ => {
                let token = ClaimToken(self.next_token.fetch_add(1, Ordering::Relaxed).to_string());
                entries.insert(
                    key.clone(),
                    Entry::Claimed {
                        token: token.clone(),
                        expires: now + lease,
                    },
                );
                Claim::Acquired(token)
            }
        });
        boxed(async move { Ok(claim) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let renewed = self.with_entries(|entries, now| match entries.get_mut(key) {
            Some(Entry::Claimed { token: t, expires }) if t == token && *expires > now => {
                *expires = now + lease;
                true
            }
            _ => false,
        });
        boxed(async move { Ok(renewed) })
    }

    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        _token: &'a ClaimToken,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        // The effect happened, so the key is done even if the claim had expired meanwhile.
        self.with_entries(|entries, now| {
            entries.insert(key.clone(), Entry::Done { expires: now + ttl });
        });
        boxed(async { Ok(()) })
    }

    fn release<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<()>> {
        self.with_entries(|entries, _| {
            if matches!(entries.get(key), Some(Entry::Claimed { token: t, .. }) if t == token) {
                entries.remove(key);
            }
        });
        boxed(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{MessageId, SubscriptionName};

    fn key(id: &str) -> IdempotencyKey {
        IdempotencyKey {
            subscription: SubscriptionName::new("billing").unwrap(),
            id: MessageId::new(id).unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_claim_while_the_first_is_live_is_in_progress_with_its_remaining_time() {
        let store = InMemoryStore::new();
        let k = key("a");
        assert!(matches!(
            store.claim(&k, Duration::from_secs(30)).await.unwrap(),
            Claim::Acquired(_)
        ));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            store.claim(&k, Duration::from_secs(30)).await.unwrap(),
            Claim::InProgress {
                remaining: Duration::from_secs(20)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_left_by_a_crashed_consumer_expires_with_its_lease() {
        let store = InMemoryStore::new();
        let k = key("a");
        store.claim(&k, Duration::from_secs(30)).await.unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(matches!(
            store.claim(&k, Duration::from_secs(30)).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn done_markers_skip_duplicates_for_the_ttl_then_expire() {
        let store = InMemoryStore::new();
        let k = key("a");
        let Claim::Acquired(token) = store.claim(&k, Duration::from_secs(30)).await.unwrap() else {
            panic!("first claim must be acquired")
        };
        store
            .complete(&k, &token, Duration::from_secs(3600))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert_eq!(
            store.claim(&k, Duration::from_secs(30)).await.unwrap(),
            Claim::Done
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            store.claim(&k, Duration::from_secs(30)).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn renew_extends_a_live_claim_and_a_stale_token_cannot_release_a_new_claim() {
        let store = InMemoryStore::new();
        let k = key("a");
        let Claim::Acquired(old) = store.claim(&k, Duration::from_secs(10)).await.unwrap() else {
            panic!()
        };
        assert!(store
            .renew(&k, &old, Duration::from_secs(60))
            .await
            .unwrap());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(matches!(
            store.claim(&k, Duration::from_secs(10)).await.unwrap(),
            Claim::InProgress { .. }
        ));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            !store
                .renew(&k, &old, Duration::from_secs(60))
                .await
                .unwrap(),
            "expired claim cannot be renewed"
        );
        let Claim::Acquired(_new) = store.claim(&k, Duration::from_secs(10)).await.unwrap() else {
            panic!()
        };
        store.release(&k, &old).await.unwrap();
        assert!(
            matches!(
                store.claim(&k, Duration::from_secs(10)).await.unwrap(),
                Claim::InProgress { .. }
            ),
            "stale release must not drop the new claim"
        );
    }
}
