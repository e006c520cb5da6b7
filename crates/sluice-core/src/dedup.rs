//! The emulated dedup window: the [`DedupStore`] contract and [`Claims`], its in-memory
//! store, for backends whose broker has no dedup window (RabbitMQ, Kafka) or cannot say that
//! it dropped a duplicate (SQS FIFO).
//!
//! DESIGN §2: claim the id before publishing (a *pending* claim), publish, then confirm the
//! claim for the window, or release it if the publish failed. Only a confirmed claim makes a
//! later publish a duplicate; someone else's pending claim makes it fail, retryably
//! ([`in_progress_error`]). A backend holds its claim as a [`PendingClaim`], which releases
//! the claim if the publish is dropped before it settled.
//!
//! [`Claims`] lives in this process only: two processes publishing the same id are not
//! deduplicated by it. A durable store shared by every publisher (Redis, PostgreSQL, SQLite:
//! `sluice-redis`, `sluice-sql`) makes the window reach across processes and restarts; each
//! backend's options take one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::idempotency::{boxed, BoxFuture, ClaimToken};

/// How long an unconfirmed claim (a publish under way) holds its id before another publisher
/// may take it: longer than any publish waits for its broker's confirm.
pub const PENDING_CLAIM: Duration = Duration::from_secs(120);

/// The answer to a dedup claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupClaim {
    /// Not published within the window: publish, then [`confirm`](DedupStore::confirm) (or
    /// [`release`](DedupStore::release) if the publish failed).
    Claimed(ClaimToken),
    /// Published within the window: this publish is a duplicate and is dropped.
    Duplicate,
    /// Another publish of this id is under way and not confirmed yet: nobody can tell yet
    /// whether it will succeed, so this publish fails with a retryable error (never dropped
    /// as a duplicate, which would lose the message if the other publish failed). The other
    /// claim ends with its confirm or release, or after `remaining` if its publisher died.
    InProgress {
        /// Time left on the pending claim.
        remaining: Duration,
    },
}

/// Where an emulated dedup window keeps its claims: `(topic, message id)`, pending while the
/// publish is under way, confirmed until the window ends. Shared by every publisher that
/// must see the same window.
///
/// The publish path is: [`claim`](Self::claim); on [`DedupClaim::Claimed`] publish, then
/// [`confirm`](Self::confirm) on success or [`release`](Self::release) on failure. A claim
/// whose answer was lost, or whose publisher died, stays pending for [`PENDING_CLAIM`] at
/// most and never counts as "published": no message is ever dropped because of a claim that
/// was not confirmed.
pub trait DedupStore: Send + Sync + 'static {
    /// Claims `id` on `topic` as pending for `pending`.
    fn claim<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        pending: Duration,
    ) -> BoxFuture<'a, Result<DedupClaim>>;

    /// The publish succeeded: `id` is a duplicate on `topic` for `window` from now. Applies
    /// even if the pending claim expired meanwhile (the message was published).
    fn confirm<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        token: &'a ClaimToken,
        window: Duration,
    ) -> BoxFuture<'a, Result<()>>;

    /// The publish failed: drops the pending claim if it is still this token's.
    fn release<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<()>>;

    /// Drops every claim of a deleted topic, so a topic created again under its name starts
    /// with an empty window.
    fn forget_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// The error of a publish that met another publish's pending claim of its id: retryable
/// (the other publish may still fail), naming the topic, the id and the time left on the
/// other claim. Every backend emulating a dedup window fails such a publish with it.
pub fn in_progress_error(topic: &str, id: &str, remaining: Duration) -> Error {
    // Whole milliseconds: the nanoseconds of a remaining time say nothing to a reader.
    let remaining = Duration::from_millis(u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX));
    Error::backend(
        format!(
            "message `{id}` not published to topic `{topic}`: another publish of this id is \
             in progress (its dedup claim is pending for {} more); try again after it",
            humantime::format_duration(remaining)
        ),
        true,
    )
}

impl DedupClaim {
    /// What a publish does with this answer, for a backend that emulates the window:
    /// `Some` claim to publish under (then confirm or release it), `None` for a duplicate,
    /// and for another publish in progress the retryable [`in_progress_error`] naming
    /// `topic`. `store`, `key` and `spawn_release` make the [`PendingClaim`]: the store
    /// answered, the name it keeps the topic's claims under, the backend's spawner.
    ///
    /// # Errors
    /// [`in_progress_error`] for [`DedupClaim::InProgress`].
    pub fn into_pending(
        self,
        store: &Arc<dyn DedupStore>,
        key: String,
        topic: &str,
        id: &str,
        spawn_release: SpawnRelease,
    ) -> Result<Option<PendingClaim>> {
        match self {
            DedupClaim::Claimed(token) => Ok(Some(PendingClaim::new(
                Arc::clone(store),
                key,
                id,
                token,
                spawn_release,
            ))),
            DedupClaim::Duplicate => Ok(None),
            DedupClaim::InProgress { remaining } => Err(in_progress_error(topic, id, remaining)),
        }
    }
}

/// Runs the release of a [`PendingClaim`] dropped before it settled. The backend gives one
/// that spawns the future on its runtime (the drop cannot await it); one that drops the
/// future (no runtime at hand) leaves the claim to end after its pending time.
pub type SpawnRelease = fn(BoxFuture<'static, Result<()>>);

/// A claim a publish holds while it is under way: [`confirm`](Self::confirm) it once the
/// broker confirmed the message, [`release`](Self::release) it if the publish failed. A
/// `PendingClaim` dropped without either (the publish future was dropped between claim and
/// outcome) hands its release to the backend's [`SpawnRelease`], so a retry need not wait
/// for the pending time to end. Whether or not that release runs, the claim never makes
/// the id a duplicate: only a confirm does.
#[must_use = "a pending claim is confirmed after a successful publish or released after a failed one"]
pub struct PendingClaim {
    store: Arc<dyn DedupStore>,
    topic: String,
    id: String,
    token: ClaimToken,
    spawn_release: SpawnRelease,
    /// Confirmed or released (or being so): nothing left for the drop to do.
    settled: bool,
}

impl std::fmt::Debug for PendingClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingClaim")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .field("token", &self.token)
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

impl PendingClaim {
    /// The claim `token` of `id` on `topic` (as the store keys it), taken from `store`.
    pub fn new(
        store: Arc<dyn DedupStore>,
        topic: impl Into<String>,
        id: impl Into<String>,
        token: ClaimToken,
        spawn_release: SpawnRelease,
    ) -> Self {
        Self {
            store,
            topic: topic.into(),
            id: id.into(),
            token,
            spawn_release,
            settled: false,
        }
    }

    /// The message id claimed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The publish succeeded: the id is a duplicate for `window`. Settles the claim at the
    /// call, so from then on its drop releases nothing: if the confirm fails (or its future
    /// is dropped), the claim stays pending until its pending time ends, never released,
    /// since the message was published.
    ///
    /// # Errors
    /// The store's.
    pub fn confirm(mut self, window: Duration) -> impl Future<Output = Result<()>> + Send {
        self.settled = true;
        async move {
            self.store
                .confirm(&self.topic, &self.id, &self.token, window)
                .await
        }
    }

    /// The publish failed: drops the claim (if it is still this one), so a retry goes
    /// through. If this fails (or its future is dropped), the claim ends after its pending
    /// time.
    ///
    /// # Errors
    /// The store's.
    pub fn release(mut self) -> impl Future<Output = Result<()>> + Send {
        self.settled = true;
        async move { self.store.release(&self.topic, &self.id, &self.token).await }
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let store = Arc::clone(&self.store);
        let topic = std::mem::take(&mut self.topic);
        let id = std::mem::take(&mut self.id);
        let token = self.token.clone();
        (self.spawn_release)(boxed(
            async move { store.release(&topic, &id, &token).await },
        ));
    }
}

/// Claims of `(topic, id)`: pending until their publish settles or their pending time ends,
/// confirmed until their window ends.
#[derive(Debug, Default)]
pub struct Claims {
    // std Mutex: held for a map operation, never across an .await.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    claims: HashMap<(String, String), Entry>,
    /// The next token handed out (tokens are only ever given back to this store).
    next_token: u64,
}

#[derive(Debug)]
enum Entry {
    /// A publish under way holds the id until `until`.
    Pending { token: ClaimToken, until: Instant },
    /// Published: a duplicate until `until`.
    Confirmed { until: Instant },
}

impl Entry {
    fn until(&self) -> Instant {
        match self {
            Entry::Pending { until, .. } | Entry::Confirmed { until } => *until,
        }
    }
}

/// Claims kept before expired ones are swept out on the next claim.
const SWEEP_ABOVE: usize = 4096;

impl Claims {
    /// [`DedupStore::claim`] at `now` (for tests): a confirmed claim alive at `now` is a
    /// [`DedupClaim::Duplicate`], a pending one [`DedupClaim::InProgress`]; otherwise the id is
    /// claimed as pending until `now + pending`.
    pub fn claim_at(&self, topic: &str, id: &str, pending: Duration, now: Instant) -> DedupClaim {
        let mut state = self.state.lock().expect("claims lock");
        if state.claims.len() > SWEEP_ABOVE {
            state.claims.retain(|_, entry| entry.until() > now);
        }
        let key = (topic.to_owned(), id.to_owned());
        match state.claims.get(&key) {
            Some(Entry::Confirmed { until }) if *until > now => DedupClaim::Duplicate,
            Some(Entry::Pending { until, .. }) if *until > now => DedupClaim::InProgress {
                remaining: *until - now,
            },
            _ => {
                let token = ClaimToken(state.next_token.to_string());
                state.next_token += 1;
                let until = now + pending;
                state.claims.insert(
                    key,
                    Entry::Pending {
                        token: token.clone(),
                        until,
                    },
                );
                DedupClaim::Claimed(token)
            }
        }
    }

    /// [`DedupStore::confirm`] at `now` (for tests): the id is a duplicate until
    /// `now + window`, whatever claim it held (the message was published).
    pub fn confirm_at(&self, topic: &str, id: &str, window: Duration, now: Instant) {
        let key = (topic.to_owned(), id.to_owned());
        self.state.lock().expect("claims lock").claims.insert(
            key,
            Entry::Confirmed {
                until: now + window,
            },
        );
    }

    /// Drops the pending claim of a failed publish, if it is still `token`'s: neither a
    /// newer claim (taken after this one's pending time ended) nor a confirmed one goes.
    pub fn release(&self, topic: &str, id: &str, token: &ClaimToken) {
        let key = (topic.to_owned(), id.to_owned());
        let mut state = self.state.lock().expect("claims lock");
        if matches!(state.claims.get(&key), Some(Entry::Pending { token: held, .. }) if held == token)
        {
            state.claims.remove(&key);
        }
    }

    /// Drops every claim of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        self.state
            .lock()
            .expect("claims lock")
            .claims
            .retain(|(t, _), _| t != topic);
    }
}

impl DedupStore for Claims {
    fn claim<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        pending: Duration,
    ) -> BoxFuture<'a, Result<DedupClaim>> {
        let claim = self.claim_at(topic, id, pending, Instant::now());
        boxed(async move { Ok(claim) })
    }

    fn confirm<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        _token: &'a ClaimToken,
        window: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        // Unconditional: the message was published, whoever holds the claim now.
        self.confirm_at(topic, id, window, Instant::now());
        boxed(async { Ok(()) })
    }

    fn release<'a>(
        &'a self,
        topic: &'a str,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<()>> {
        Claims::release(self, topic, id, token);
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

    const PENDING: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(60);

    fn claimed(claim: DedupClaim) -> ClaimToken {
        match claim {
            DedupClaim::Claimed(token) => token,
            other => panic!("expected the id to be claimed, got {other:?}"),
        }
    }

    #[test]
    fn a_confirmed_id_is_a_duplicate_within_the_window_per_topic_and_free_after_it() {
        let claims = Claims::default();
        let start = Instant::now();
        claimed(claims.claim_at("t", "a", PENDING, start));
        claims.confirm_at("t", "a", WINDOW, start);
        let within = start + WINDOW - Duration::from_millis(1);
        assert_eq!(
            claims.claim_at("t", "a", PENDING, within),
            DedupClaim::Duplicate,
            "within the window"
        );
        claimed(claims.claim_at("other", "a", PENDING, start));
        claimed(claims.claim_at("t", "a", PENDING, start + WINDOW));
    }

    #[test]
    fn a_pending_id_is_in_progress_until_its_pending_time_ends_then_claimable() {
        let claims = Claims::default();
        let start = Instant::now();
        let first = claimed(claims.claim_at("t", "a", PENDING, start));
        let later = start + Duration::from_secs(4);
        assert_eq!(
            claims.claim_at("t", "a", PENDING, later),
            DedupClaim::InProgress {
                remaining: Duration::from_secs(6)
            },
            "a pending claim is never a duplicate"
        );
        let second = claimed(claims.claim_at("t", "a", PENDING, start + PENDING));
        assert_ne!(first, second, "every claim has its own token");
    }

    #[test]
    fn a_release_drops_its_own_pending_claim_but_never_a_newer_or_a_confirmed_one() {
        let claims = Claims::default();
        let start = Instant::now();
        let stale = claimed(claims.claim_at("t", "a", PENDING, start));
        let after = start + PENDING;
        let newer = claimed(claims.claim_at("t", "a", PENDING, after));
        claims.release("t", "a", &stale);
        assert!(
            matches!(
                claims.claim_at("t", "a", PENDING, after),
                DedupClaim::InProgress { .. }
            ),
            "a stale token does not drop the newer claim"
        );
        claims.release("t", "a", &newer);
        let token = claimed(claims.claim_at("t", "a", PENDING, after));
        claims.confirm_at("t", "a", WINDOW, after);
        claims.release("t", "a", &token);
        assert_eq!(
            claims.claim_at("t", "a", PENDING, after),
            DedupClaim::Duplicate,
            "a release after the confirm does not drop it"
        );
    }

    #[test]
    fn a_confirm_after_the_pending_time_ended_still_confirms() {
        let claims = Claims::default();
        let start = Instant::now();
        claimed(claims.claim_at("t", "a", PENDING, start));
        let late = start + PENDING + Duration::from_secs(1);
        claims.confirm_at("t", "a", WINDOW, late);
        assert_eq!(
            claims.claim_at("t", "a", PENDING, late),
            DedupClaim::Duplicate
        );
        assert_eq!(
            claims.claim_at("t", "a", PENDING, late + WINDOW - Duration::from_millis(1)),
            DedupClaim::Duplicate,
            "the window runs from the confirm"
        );
    }

    #[test]
    fn forgetting_a_topic_drops_its_pending_and_confirmed_claims_only() {
        let claims = Claims::default();
        let start = Instant::now();
        claimed(claims.claim_at("t", "pending", PENDING, start));
        claims.confirm_at("t", "done", WINDOW, start);
        claims.confirm_at("other", "done", WINDOW, start);
        claims.forget_topic("t");
        claimed(claims.claim_at("t", "pending", PENDING, start));
        claimed(claims.claim_at("t", "done", PENDING, start));
        assert_eq!(
            claims.claim_at("other", "done", PENDING, start),
            DedupClaim::Duplicate
        );
    }

    #[test]
    fn expired_claims_are_swept_once_the_map_is_large() {
        let claims = Claims::default();
        let start = Instant::now();
        for i in 0..=SWEEP_ABOVE {
            claimed(claims.claim_at("t", &i.to_string(), PENDING, start));
        }
        claimed(claims.claim_at("t", "new", PENDING, start + PENDING));
        assert_eq!(claims.state.lock().unwrap().claims.len(), 1);
    }

    #[test]
    fn the_in_progress_error_is_retryable_and_names_the_topic_the_id_and_the_time_left() {
        let err = in_progress_error("orders", "order-42", Duration::from_micros(95_000_700));
        assert!(err.is_retryable(), "{err:?}");
        let text = err.to_string();
        for part in ["`orders`", "`order-42`", "in progress", "1m 35s"] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }

    #[tokio::test]
    async fn a_dropped_pending_claim_hands_its_release_to_the_backend_a_settled_one_does_not() {
        static SPAWNED: Mutex<Vec<BoxFuture<'static, Result<()>>>> = Mutex::new(Vec::new());
        fn keep(release: BoxFuture<'static, Result<()>>) {
            SPAWNED.lock().unwrap().push(release);
        }
        let claims: Arc<dyn DedupStore> = Arc::new(Claims::default());
        let take = |id: &'static str| {
            let claims = Arc::clone(&claims);
            async move {
                let token = claimed(claims.claim("t", id, PENDING).await.unwrap());
                PendingClaim::new(claims, "t", id, token, keep)
            }
        };

        drop(take("dropped").await);
        take("confirmed").await.confirm(WINDOW).await.unwrap();
        take("released").await.release().await.unwrap();
        // Confirmed, but the confirm never ran: the message may be out, so no release.
        drop(take("confirm-dropped").await.confirm(WINDOW));
        let spawned: Vec<_> = SPAWNED.lock().unwrap().drain(..).collect();
        assert_eq!(
            spawned.len(),
            1,
            "only the claim dropped before it settled is released by its drop"
        );
        assert!(
            matches!(
                claims.claim("t", "confirm-dropped", PENDING).await.unwrap(),
                DedupClaim::InProgress { .. }
            ),
            "a confirm that never ran leaves the claim pending until its pending time ends"
        );
        assert!(
            matches!(
                claims.claim("t", "dropped", PENDING).await.unwrap(),
                DedupClaim::InProgress { .. }
            ),
            "pending until the spawned release runs"
        );
        for release in spawned {
            release.await.unwrap();
        }
        claimed(claims.claim("t", "dropped", PENDING).await.unwrap());
        claimed(claims.claim("t", "released", PENDING).await.unwrap());
        assert_eq!(
            claims.claim("t", "confirmed", PENDING).await.unwrap(),
            DedupClaim::Duplicate
        );
    }
}
