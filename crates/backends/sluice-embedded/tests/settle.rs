//! Acks, retries and releases issued at about the same time are settled together (one
//! engine call): each still gets its own outcome, what was settled survives a reopen, and a
//! verb whose future is dropped after its first poll still hands the queue over.

use std::time::Duration;

use futures::future::join_all;
use sluice_core::{
    Backend, Delivery, Message, Publisher, StartPosition, Subscriber, SubscriptionConfig,
    SubscriptionName, TopicConfig, TopicName,
};
use sluice_embedded::EmbeddedBackend;

async fn setup(dir: &std::path::Path, ids: &[&str]) -> (EmbeddedBackend, SubscriptionName) {
    let backend = EmbeddedBackend::open(dir).await.unwrap();
    let topic = TopicName::new("orders").unwrap();
    let sub = SubscriptionName::new("billing").unwrap();
    backend
        .ensure_topic(&topic, &TopicConfig::default())
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone()).start(StartPosition::Earliest);
    backend.ensure_subscription(&sub, &config).await.unwrap();
    let publisher = backend.publisher().await.unwrap();
    for id in ids {
        let message = Message::builder("x").id(*id).build().unwrap();
        publisher.publish(&topic, message).await.unwrap();
    }
    (backend, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_issued_together_each_get_their_own_outcome_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a", "b", "c", "d", "e", "f"];
    let (backend, sub) = setup(dir.path(), &ids).await;
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let got = subscriber
        .receive(10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 6);
    let verbs = got.into_iter().map(|d| async move {
        let id = d.message().id().to_string();
        let outcome = match id.as_str() {
            "e" => d.retry(Duration::from_millis(1)).await,
            "f" => d.release().await,
            _ => d.ack().await,
        };
        (id, outcome.is_ok())
    });
    let outcomes = join_all(verbs).await;
    assert!(outcomes.iter().all(|(_, ok)| *ok), "{outcomes:?}");
    backend.close().await.unwrap();

    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while again.len() < 2 && tokio::time::Instant::now() < deadline {
        let batch = subscriber
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap();
        again.extend(
            batch
                .iter()
                .map(|d| (d.message().id().to_string(), d.attempt())),
        );
    }
    again.sort();
    assert_eq!(
        again,
        vec![("e".to_string(), 2), ("f".to_string(), 1)],
        "only the retried (attempt 2) and the released (attempt 1) come back"
    );
    let nothing = subscriber.receive(10, Duration::from_millis(300)).await;
    assert!(nothing.unwrap().is_empty(), "the acked stay settled");
}

/// Waits until `sub` has `in_flight` messages in flight and none ready.
async fn wait_in_flight(backend: &EmbeddedBackend, sub: &SubscriptionName, in_flight: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = backend.stats(sub).await.unwrap();
        if stats.in_flight == Some(in_flight) && stats.ready == Some(0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {in_flight} in flight: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verb_dropped_after_its_first_poll_is_still_handed_to_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, sub) = setup(dir.path(), &["a", "b"]).await;
    let subscriber = backend.subscribe(&sub).await.unwrap();
    let mut got = subscriber.receive(2, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 2);
    let (second, first) = (got.pop().unwrap(), got.pop().unwrap());

    // The ack queues itself and yields; its future is dropped before its next poll, with
    // no other verb coming to hand the queue over.
    let mut first = Box::pin(first.ack());
    assert!(futures::poll!(&mut first).is_pending(), "it yields first");
    drop(first);
    wait_in_flight(&backend, &sub, 1).await;

    second.ack().await.map_err(|e| e.error).unwrap();
    wait_in_flight(&backend, &sub, 0).await;
}
