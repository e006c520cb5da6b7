//! Read-ahead: a receive of at least 16 that comes back full leases the next batch in the
//! background; a shallow backlog or a small receive is not read ahead; what was read ahead and not handed out goes back to
//! the subscription with its attempt (at close, on drop, at half its lease).

use std::time::Duration;

use sluice_core::{
    Backend, Delivery, Message, Publisher, StartPosition, Subscriber, SubscriptionConfig,
    SubscriptionName, TopicConfig, TopicName,
};
use sluice_embedded::EmbeddedBackend;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

async fn setup(
    dir: &std::path::Path,
    messages: usize,
    lease: Duration,
) -> (EmbeddedBackend, SubscriptionName) {
    let backend = EmbeddedBackend::open(dir).await.unwrap();
    let topic = TopicName::new("orders").unwrap();
    let sub = SubscriptionName::new("billing").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone())
        .start(StartPosition::Earliest)
        .lease(lease);
    backend.ensure_subscription(&sub, &config).await.unwrap();
    let publisher = backend.publisher().await.unwrap();
    let batch = (0..messages)
        .map(|i| Message::builder("x").id(format!("m{i}")).build().unwrap())
        .collect();
    for receipt in publisher.publish_batch(&topic, batch).await {
        receipt.unwrap();
    }
    (backend, sub)
}

/// Waits until the subscription's stats say `ready` and `in_flight`.
async fn stats_reach(
    backend: &EmbeddedBackend,
    sub: &SubscriptionName,
    ready: u64,
    in_flight: u64,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = backend.stats(sub).await.unwrap();
        if (stats.ready, stats.in_flight) == (Some(ready), Some(in_flight)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ready {:?}, in flight {:?}; expected {ready}, {in_flight}",
            stats.ready,
            stats.in_flight
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many deliveries a competing subscriber finds now (acked at once).
async fn left_for_others(backend: &EmbeddedBackend, sub: &SubscriptionName) -> usize {
    let other = backend.subscribe(sub).await.unwrap();
    let got = other.receive(100, Duration::ZERO).await.unwrap();
    let n = got.len();
    for d in got {
        d.ack().await.unwrap();
    }
    n
}

/// Receives from `subscriber` until `n` deliveries came; returns their attempts.
async fn attempts<S: Subscriber>(subscriber: &S, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        for d in subscriber.receive(n - got.len(), WAIT).await.unwrap() {
            got.push(d.attempt());
            d.ack().await.unwrap();
        }
    }
    assert_eq!(got.len(), n, "deliveries");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_receive_reads_the_next_batch_ahead_and_hands_it_out_next() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, sub) = setup(dir.path(), 56, Duration::from_secs(30)).await;
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let first = subscriber.receive(16, WAIT).await.unwrap();
    assert_eq!(first.len(), 16);
    // The next 16 are leased (and journalled) while the first are being handled; the stats
    // count them as ready, since no handler holds them yet.
    stats_reach(&backend, &sub, 40, 16).await;
    let second = subscriber.receive(16, WAIT).await.unwrap();
    let ids: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|d| d.message().id().to_string())
        .collect();
    let expected: Vec<String> = (0..32).map(|i| format!("m{i}")).collect();
    assert_eq!(ids, expected, "in order, none skipped or repeated");
    assert!(second.iter().all(|d| d.attempt() == 1));
    // The third batch (16 more) is read ahead in turn: a competing subscriber finds the
    // last 8.
    assert_eq!(left_for_others(&backend, &sub).await, 8);
    for d in first.into_iter().chain(second) {
        d.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_or_small_receive_leases_only_what_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, sub) = setup(dir.path(), 20, Duration::from_secs(30)).await;
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let got = subscriber.receive(32, WAIT).await.unwrap();
    assert_eq!(got.len(), 20);
    // A receive of fewer than 16 never reads ahead, full or not.
    let dir2 = tempfile::tempdir().unwrap();
    let (backend2, sub2) = setup(dir2.path(), 20, Duration::from_secs(30)).await;
    let small = backend2.subscribe(&sub2).await.unwrap();
    assert_eq!(small.receive(10, WAIT).await.unwrap().len(), 10);
    // Nothing more is leased: a competing subscriber finds the rest.
    assert_eq!(backend.stats(&sub).await.unwrap().in_flight, Some(20));
    assert_eq!(backend2.stats(&sub2).await.unwrap().in_flight, Some(10));
    assert_eq!(left_for_others(&backend2, &sub2).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_read_ahead_goes_back_with_its_attempt_when_the_subscriber_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, sub) = setup(dir.path(), 32, Duration::from_secs(30)).await;
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let first = subscriber.receive(16, WAIT).await.unwrap();
    // Closing waits for the batch read ahead and gives it back.
    subscriber.close().await.unwrap();
    let stats = backend.stats(&sub).await.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (Some(16), Some(16)));
    for d in first {
        d.ack().await.unwrap();
    }
    let other = backend.subscribe(&sub).await.unwrap();
    assert_eq!(attempts(&other, 16).await, vec![1; 16], "no attempt spent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_read_ahead_goes_back_when_the_subscriber_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, sub) = setup(dir.path(), 32, Duration::from_secs(30)).await;
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let first = subscriber.receive(16, WAIT).await.unwrap();
    drop(subscriber);
    stats_reach(&backend, &sub, 16, 16).await;
    for d in first {
        d.ack().await.unwrap();
    }
    let other = backend.subscribe(&sub).await.unwrap();
    assert_eq!(attempts(&other, 16).await, vec![1; 16]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_read_ahead_and_not_taken_goes_back_at_half_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    // A lease long enough that a release at half of it is told apart from its end.
    let lease = Duration::from_secs(4);
    let (backend, sub) = setup(dir.path(), 32, lease).await;
    let slow = backend.subscribe(&sub).await.unwrap();
    let first = slow.receive(16, WAIT).await.unwrap();
    stats_reach(&backend, &sub, 16, 16).await;
    for d in first {
        d.ack().await.unwrap();
    }
    let started = Instant::now();
    // The slow consumer never comes back for the batch read ahead: another one gets it,
    // released at half its lease (about 2 s), not when the lease ends (4 s), its attempt
    // not spent.
    let other = backend.subscribe(&sub).await.unwrap();
    let got = attempts(&other, 16).await;
    let waited = started.elapsed();
    assert_eq!(got, vec![1; 16], "released, not expired");
    assert!(
        waited < lease,
        "released at half the lease, not at its end: {waited:?}"
    );
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dropped_with_a_batch_read_ahead_can_be_opened_again_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, sub) = setup(dir.path(), 32, Duration::from_secs(30)).await;
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let first = subscriber.receive(16, WAIT).await.unwrap();
    stats_reach(&backend, &sub, 16, 16).await;
    drop(first);
    drop(subscriber);
    drop(backend);
    // Nothing waiting for the read-ahead's half lease keeps the engine (and its directory)
    // open.
    let again = EmbeddedBackend::open(dir.path()).await;
    assert!(again.is_ok(), "reopened: {:?}", again.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_that_does_not_wait_gets_the_batch_being_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, sub) = setup(dir.path(), 32, Duration::from_secs(30)).await;
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let first = subscriber.receive(16, WAIT).await.unwrap();
    // Its flush may still be under way: the batch is leased, so it is handed out, not `[]`.
    let second = subscriber.receive(16, Duration::ZERO).await.unwrap();
    assert_eq!((first.len(), second.len()), (16, 16));
    for d in first.into_iter().chain(second) {
        d.ack().await.unwrap();
    }
}
