//! `RedisStore` against the real Redis at 127.0.0.1:6379, in real time: the semantic tests
//! of the in-memory stores (`sluice_runtime::InMemoryStore`, `sluice_core::dedup::Claims`)
//! with short leases, concurrent claims, and two workers racing on one message id.
//!
//! Every test uses its own key prefix, so runs and parallel tests never see each other's
//! keys; every key expires by itself. Time passing is observed by polling a condition with
//! a deadline, never by a bare sleep.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, Claim, ClaimToken, DedupClaim, DedupStore, IdempotencyKey, IdempotencyStore, Message,
    MessageId, PublishOutcome, Publisher, SubscriptionConfig, SubscriptionName, TopicConfig,
    TopicName,
};
use sluice_redis::RedisStore;
use sluice_runtime::{raw_handler, CancellationToken, Idempotency, StatsSnapshot, Worker};

const URL: &str = "redis://127.0.0.1:6379";

/// A store on its own connection, under `prefix`.
async fn store_at(prefix: &str) -> RedisStore {
    RedisStore::connect(URL)
        .await
        .expect("Redis runs at 127.0.0.1:6379")
        .with_prefix(prefix)
}

/// A prefix no other test or run uses.
fn unique_prefix() -> String {
    format!("sluice-test-{}", uuid::Uuid::now_v7().simple())
}

async fn store() -> RedisStore {
    store_at(&unique_prefix()).await
}

fn key(id: &str) -> IdempotencyKey {
    IdempotencyKey {
        subscription: SubscriptionName::new("billing").unwrap(),
        id: MessageId::new(id).unwrap(),
    }
}

async fn claim(store: &RedisStore, key: &IdempotencyKey, lease: Duration) -> Claim {
    IdempotencyStore::claim(store, key, lease)
        .await
        .expect("claiming")
}

async fn acquire(store: &RedisStore, key: &IdempotencyKey, lease: Duration) -> ClaimToken {
    match claim(store, key, lease).await {
        Claim::Acquired(token) => token,
        other => panic!("expected the claim of {key} to be acquired, got {other:?}"),
    }
}

/// Polls `claim` until it is acquired, failing after `deadline`; returns when it was.
async fn acquired_within(
    store: &RedisStore,
    key: &IdempotencyKey,
    deadline: Duration,
) -> (ClaimToken, Instant) {
    let until = Instant::now() + deadline;
    loop {
        if let Claim::Acquired(token) = claim(store, key, Duration::from_secs(10)).await {
            return (token, Instant::now());
        }
        assert!(
            Instant::now() < until,
            "{key} was not free again within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `cond` holds, failing after `deadline`.
async fn wait_until(what: &str, deadline: Duration, cond: impl Fn() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_second_claim_while_the_first_is_live_is_in_progress_with_its_remaining_time() {
    let store = store().await;
    let k = key("a");
    let lease = Duration::from_secs(5);
    let started = Instant::now();
    acquire(&store, &k, lease).await;
    let Claim::InProgress { remaining } = claim(&store, &k, lease).await else {
        panic!("a live claim must make a second claim in progress")
    };
    let elapsed = started.elapsed();
    assert!(
        remaining <= lease && remaining + Duration::from_millis(2) >= lease - elapsed,
        "remaining {remaining:?} must be the lease {lease:?} less the {elapsed:?} since"
    );
}

#[tokio::test]
async fn a_claim_left_by_a_crashed_consumer_expires_with_its_lease() {
    let store = store().await;
    let k = key("a");
    let lease = Duration::from_millis(300);
    let claimed = Instant::now();
    acquire(&store, &k, lease).await;
    assert!(matches!(
        claim(&store, &k, lease).await,
        Claim::InProgress { .. }
    ));
    // Nobody renews, completes or releases it.
    let (_, free) = acquired_within(&store, &k, Duration::from_secs(5)).await;
    assert!(
        free - claimed >= lease - Duration::from_millis(5),
        "the claim must live for its lease: free after {:?}",
        free - claimed
    );
}

#[tokio::test]
async fn done_markers_skip_duplicates_for_the_ttl_then_expire() {
    let store = store().await;
    let k = key("a");
    let token = acquire(&store, &k, Duration::from_secs(30)).await;
    let ttl = Duration::from_millis(500);
    let completed = Instant::now();
    store.complete(&k, &token, ttl).await.unwrap();
    assert_eq!(
        claim(&store, &k, Duration::from_secs(30)).await,
        Claim::Done,
        "a done key is skipped"
    );
    let (_, free) = acquired_within(&store, &k, Duration::from_secs(5)).await;
    assert!(
        free - completed >= ttl - Duration::from_millis(5),
        "the done marker must live for its TTL: gone after {:?}",
        free - completed
    );
}

#[tokio::test]
async fn complete_marks_the_key_done_even_after_its_claim_was_lost() {
    let store = store().await;
    let k = key("a");
    let stale = acquire(&store, &k, Duration::from_millis(50)).await;
    acquired_within(&store, &k, Duration::from_secs(5)).await;
    store
        .complete(&k, &stale, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        claim(&store, &k, Duration::from_secs(30)).await,
        Claim::Done
    );
}

#[tokio::test]
async fn renew_extends_a_live_claim_and_a_stale_token_cannot_release_a_new_claim() {
    let store = store().await;
    let k = key("a");
    let old = acquire(&store, &k, Duration::from_millis(300)).await;
    assert!(store
        .renew(&k, &old, Duration::from_secs(10))
        .await
        .unwrap());
    let Claim::InProgress { remaining } = claim(&store, &k, Duration::from_secs(1)).await else {
        panic!("the renewed claim must be live")
    };
    assert!(
        remaining > Duration::from_secs(9),
        "renew extends the claim to the new lease: {remaining:?} left"
    );
    // Shorten it again so it runs out, as a crashed consumer's would.
    assert!(store
        .renew(&k, &old, Duration::from_millis(200))
        .await
        .unwrap());
    let (_new, _) = acquired_within(&store, &k, Duration::from_secs(5)).await;
    assert!(
        !store
            .renew(&k, &old, Duration::from_secs(60))
            .await
            .unwrap(),
        "an expired claim cannot be renewed"
    );
    IdempotencyStore::release(&store, &k, &old).await.unwrap();
    assert!(
        matches!(
            claim(&store, &k, Duration::from_secs(10)).await,
            Claim::InProgress { .. }
        ),
        "a stale release must not drop the new claim"
    );
}

#[tokio::test]
async fn release_drops_the_claim_so_the_next_delivery_runs() {
    let store = store().await;
    let k = key("a");
    let token = acquire(&store, &k, Duration::from_secs(30)).await;
    IdempotencyStore::release(&store, &k, &token).await.unwrap();
    acquire(&store, &k, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_fifty_concurrent_claims_of_one_key_exactly_one_is_acquired() {
    let prefix = unique_prefix();
    let mut stores = Vec::new();
    for _ in 0..5 {
        stores.push(store_at(&prefix).await);
    }
    let k = key("contended");
    let claims = (0..50).map(|i| {
        let store = stores[i % stores.len()].clone();
        let k = k.clone();
        tokio::spawn(async move { claim(&store, &k, Duration::from_secs(30)).await })
    });
    let claims: Vec<Claim> = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(|joined| joined.expect("claim task"))
        .collect();
    let acquired = claims
        .iter()
        .filter(|c| matches!(c, Claim::Acquired(_)))
        .count();
    let in_progress = claims
        .iter()
        .filter(|c| matches!(c, Claim::InProgress { .. }))
        .count();
    assert_eq!(acquired, 1, "exactly one claim wins: {claims:?}");
    assert_eq!(in_progress, 49, "every other claim is in progress");
}

/// Claims `id` on `topic` for `pending`, expecting it to be free.
async fn dedup_claimed(store: &RedisStore, topic: &str, id: &str, pending: Duration) -> ClaimToken {
    match DedupStore::claim(store, topic, id, pending).await.unwrap() {
        DedupClaim::Claimed(token) => token,
        other => panic!("expected {topic}/{id} to be claimed, got {other:?}"),
    }
}

/// Polls a dedup claim of `id` until it is claimed, failing after `deadline`.
async fn dedup_claimed_within(
    store: &RedisStore,
    topic: &str,
    id: &str,
    deadline: Duration,
) -> (ClaimToken, Instant) {
    let until = Instant::now() + deadline;
    loop {
        let claim = DedupStore::claim(store, topic, id, Duration::from_secs(10))
            .await
            .unwrap();
        if let DedupClaim::Claimed(token) = claim {
            return (token, Instant::now());
        }
        assert!(
            Instant::now() < until,
            "{topic}/{id} was not free again within {deadline:?}: {claim:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_confirmed_dedup_claim_is_a_duplicate_within_its_window_per_topic_and_free_after_it() {
    let store = store().await;
    let pending = Duration::from_secs(30);
    let token = dedup_claimed(&store, "t", "a", pending).await;
    DedupStore::confirm(&store, "t", "a", &token, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        DedupStore::claim(&store, "t", "a", pending).await.unwrap(),
        DedupClaim::Duplicate,
        "within the window"
    );
    dedup_claimed(&store, "other", "a", pending).await;

    let window = Duration::from_millis(300);
    let token = dedup_claimed(&store, "t", "b", pending).await;
    let confirmed = Instant::now();
    DedupStore::confirm(&store, "t", "b", &token, window)
        .await
        .unwrap();
    let (_, free) = dedup_claimed_within(&store, "t", "b", Duration::from_secs(5)).await;
    assert!(
        free - confirmed >= window - Duration::from_millis(5),
        "the confirmed claim must last its window: free after {:?}",
        free - confirmed
    );
}

#[tokio::test]
async fn a_pending_dedup_claim_is_in_progress_never_a_duplicate_and_free_after_its_pending_time() {
    let store = store().await;
    let pending = Duration::from_secs(5);
    let started = Instant::now();
    dedup_claimed(&store, "t", "a", pending).await;
    let DedupClaim::InProgress { remaining } =
        DedupStore::claim(&store, "t", "a", pending).await.unwrap()
    else {
        panic!("a pending claim must make a second claim in progress")
    };
    let elapsed = started.elapsed();
    assert!(
        remaining <= pending && remaining + Duration::from_millis(2) >= pending - elapsed,
        "remaining {remaining:?} must be the pending time {pending:?} less the {elapsed:?} since"
    );

    // A claim nobody confirms or releases (its answer lost, its publisher dead) ends.
    let short = Duration::from_millis(300);
    let claimed = Instant::now();
    dedup_claimed(&store, "t", "b", short).await;
    let (_, free) = dedup_claimed_within(&store, "t", "b", Duration::from_secs(5)).await;
    assert!(
        free - claimed >= short - Duration::from_millis(5),
        "the pending claim must last its pending time: free after {:?}",
        free - claimed
    );
}

#[tokio::test]
async fn of_fifty_concurrent_dedup_claims_of_a_free_id_exactly_one_is_claimed() {
    let store = store().await;
    let claims = futures::future::join_all(
        (0..50).map(|_| DedupStore::claim(&store, "t", "a", Duration::from_secs(30))),
    )
    .await;
    let claimed = claims
        .iter()
        .filter(|c| matches!(c, Ok(DedupClaim::Claimed(_))))
        .count();
    let in_progress = claims
        .iter()
        .filter(|c| matches!(c, Ok(DedupClaim::InProgress { .. })))
        .count();
    assert_eq!(claimed, 1, "exactly one claim wins: {claims:?}");
    assert_eq!(in_progress, 49, "every other claim is in progress");
}

#[tokio::test]
async fn a_dedup_release_drops_its_own_pending_claim_but_never_a_newer_or_a_confirmed_one() {
    let store = store().await;
    let stale = dedup_claimed(&store, "t", "a", Duration::from_millis(200)).await;
    let (newer, _) = dedup_claimed_within(&store, "t", "a", Duration::from_secs(5)).await;
    DedupStore::release(&store, "t", "a", &stale).await.unwrap();
    assert!(
        matches!(
            DedupStore::claim(&store, "t", "a", Duration::from_secs(30))
                .await
                .unwrap(),
            DedupClaim::InProgress { .. }
        ),
        "a stale token does not drop the newer claim"
    );
    DedupStore::release(&store, "t", "a", &newer).await.unwrap();
    let token = dedup_claimed(&store, "t", "a", Duration::from_secs(30)).await;
    DedupStore::confirm(&store, "t", "a", &token, Duration::from_secs(30))
        .await
        .unwrap();
    DedupStore::release(&store, "t", "a", &token).await.unwrap();
    assert_eq!(
        DedupStore::claim(&store, "t", "a", Duration::from_secs(30))
            .await
            .unwrap(),
        DedupClaim::Duplicate,
        "a release after the confirm does not drop it"
    );
}

#[tokio::test]
async fn a_dedup_confirm_after_the_pending_claim_expired_still_confirms() {
    let store = store().await;
    let late = dedup_claimed(&store, "t", "a", Duration::from_millis(200)).await;
    // The pending claim ended, and another publish claimed the id meanwhile.
    dedup_claimed_within(&store, "t", "a", Duration::from_secs(5)).await;
    DedupStore::confirm(&store, "t", "a", &late, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        DedupStore::claim(&store, "t", "a", Duration::from_secs(30))
            .await
            .unwrap(),
        DedupClaim::Duplicate,
        "the message was published: its id is a duplicate"
    );
}

#[tokio::test]
async fn forgetting_a_topic_drops_all_its_claims_and_no_other_topics() {
    let store = store().await;
    let pending = Duration::from_secs(60);
    // More than one SCAN page of claims, and topics whose names start like this one's.
    let ids: Vec<String> = (0..2500).map(|i| format!("id-{i}")).collect();
    let claims = futures::future::join_all(
        ids.iter()
            .map(|id| DedupStore::claim(&store, "dev.orders", id, pending)),
    )
    .await;
    assert!(claims
        .iter()
        .all(|c| matches!(c, Ok(DedupClaim::Claimed(_)))));
    let confirmed = dedup_claimed(&store, "dev.orders", "confirmed", pending).await;
    DedupStore::confirm(&store, "dev.orders", "confirmed", &confirmed, pending)
        .await
        .unwrap();
    for topic in ["dev.orders2", "dev.orders-eu"] {
        let token = dedup_claimed(&store, topic, "id-1", pending).await;
        DedupStore::confirm(&store, topic, "id-1", &token, pending)
            .await
            .unwrap();
    }

    store.forget_topic("dev.orders").await.unwrap();

    let claims = futures::future::join_all(
        ids.iter()
            .chain([&"confirmed".to_owned()])
            .map(|id| DedupStore::claim(&store, "dev.orders", id, pending)),
    )
    .await;
    let still_claimed = claims
        .iter()
        .filter(|c| !matches!(c, Ok(DedupClaim::Claimed(_))))
        .count();
    assert_eq!(still_claimed, 0, "every claim of the topic is forgotten");
    for topic in ["dev.orders2", "dev.orders-eu"] {
        assert_eq!(
            DedupStore::claim(&store, topic, "id-1", pending)
                .await
                .unwrap(),
            DedupClaim::Duplicate,
            "{topic}'s claims are kept"
        );
    }
    store.forget_topic("dev.orders").await.unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_is_a_retryable_connection_error_naming_redis() {
    // Nothing listens on port 1.
    let err = RedisStore::connect("redis://127.0.0.1:1")
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Redis at 127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_store_whose_connection_was_lost_fails_retryably_then_reconnects_by_itself() {
    let proxy = sluice_conformance::proxy::TcpProxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    let store = RedisStore::connect(&format!("redis://{}", proxy.addr()))
        .await
        .unwrap()
        .with_prefix(unique_prefix());
    let pending = Duration::from_secs(30);
    let token = dedup_claimed(&store, "t", "before", pending).await;
    DedupStore::confirm(&store, "t", "before", &token, pending)
        .await
        .unwrap();

    proxy.pause().await;
    let err = DedupStore::claim(&store, "t", "during", pending)
        .await
        .expect_err("Redis is unreachable");
    assert!(
        matches!(err, sluice_core::Error::Connection { .. }) && err.is_retryable(),
        "a lost connection is a retryable connection error: {err:?}"
    );
    assert!(err.to_string().contains("Redis at"), "{err}");

    proxy.resume();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match DedupStore::claim(&store, "t", "after", pending).await {
            Ok(claim) => {
                assert!(matches!(claim, DedupClaim::Claimed(_)), "{claim:?}");
                break;
            }
            Err(err) => assert!(
                Instant::now() < until && err.is_retryable(),
                "the store did not reconnect: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        DedupStore::claim(&store, "t", "before", pending)
            .await
            .unwrap(),
        DedupClaim::Duplicate,
        "the same Redis, the same claims"
    );
}

/// Both workers' counters, summed.
fn total(stats: &[Arc<sluice_runtime::WorkerStats>]) -> StatsSnapshot {
    let mut sum = StatsSnapshot::default();
    for s in stats.iter().map(|s| s.snapshot()) {
        sum.acked += s.acked;
        sum.duplicates_skipped += s.duplicates_skipped;
        sum.duplicates_in_progress += s.duplicates_in_progress;
        sum.retried += s.retried;
        sum.dead_lettered += s.dead_lettered;
        sum.in_flight += s.in_flight;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_racing_on_one_message_id_apply_its_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let backend = sluice_embedded::EmbeddedBackend::open(dir.path())
        .await
        .unwrap();
    let topic = TopicName::new("orders").unwrap();
    let subscription = SubscriptionName::new("billing").unwrap();
    // No dedup window: both copies are stored and delivered.
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone()).lease(Duration::from_secs(1));
    backend
        .ensure_subscription(&subscription, &config)
        .await
        .unwrap();
    let publisher = backend.publisher().await.unwrap();
    for _ in 0..2 {
        let message = Message::builder("charge").id("order-42").build().unwrap();
        let receipt = publisher.publish(&topic, message).await.unwrap();
        assert_eq!(receipt.outcome, PublishOutcome::Published);
    }

    let prefix = unique_prefix();
    let effects = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let mut stats = Vec::new();
    let mut running = Vec::new();
    for _ in 0..2 {
        // Each consumer its own process, in effect: its own connection to Redis.
        let store = store_at(&prefix).await;
        let effects = Arc::clone(&effects);
        let worker = Worker::builder(
            backend.subscribe(&subscription).await.unwrap(),
            raw_handler(move |_payload, _ctx| {
                let effects = Arc::clone(&effects);
                async move {
                    effects.fetch_add(1, Ordering::SeqCst);
                    // Long enough for the other copy to arrive while this one runs.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(())
                }
            }),
        )
        .concurrency(1)
        .poll_wait(Duration::from_millis(100))
        .idempotency(Idempotency::new(store))
        .build();
        stats.push(worker.stats());
        running.push(worker.spawn(stop.clone()));
    }

    wait_until(
        "one copy acked and the other skipped as a duplicate",
        Duration::from_secs(15),
        || {
            let sum = total(&stats);
            sum.acked == 1 && sum.duplicates_skipped == 1 && sum.in_flight == 0
        },
    )
    .await;
    stop.cancel();
    for worker in running {
        worker.await.expect("worker task");
    }
    let sum = total(&stats);
    assert_eq!(
        effects.load(Ordering::SeqCst),
        1,
        "the effect happens once for one id: {sum:?}"
    );
    assert!(
        sum.duplicates_in_progress >= 1,
        "the second copy arrived while the first ran (it was retried, not acked): {sum:?}"
    );
    assert_eq!(sum.dead_lettered, 0, "{sum:?}");
    let left = backend.stats(&subscription).await.unwrap();
    assert_eq!(left.backlog(), Some(0), "both copies are settled: {left:?}");
}

#[tokio::test]
async fn the_redis_job_store_keeps_the_job_store_contract() {
    let store: Arc<dyn sluice_core::JobStore> = Arc::new(store().await);
    sluice_testing::check_job_store(store).await;
}

#[tokio::test]
async fn the_redis_limiter_keeps_the_limiter_contract() {
    let store: Arc<dyn sluice_core::LimiterStore> = Arc::new(store().await);
    sluice_testing::check_limiter(store.clone()).await;
    sluice_testing::check_flags(store).await;
}
