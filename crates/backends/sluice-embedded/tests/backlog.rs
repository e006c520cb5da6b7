//! Backlog bounds through the contract (`TopicConfig::backlog_bound`): a topic bounded with
//! `Block` makes a publish past the bound wait for consumers to make room, then go through,
//! or fail with `BacklogFull` once the bound's timeout has passed; with `Reject` it fails at
//! once; the bound round-trips through `describe_topic` and `ensure_topic`.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, BacklogBound, Delivery, Error, Message, ObjectKind, Overflow, Publisher,
    StartPosition, Subscriber, SubscriptionConfig, SubscriptionName, TopicConfig, TopicName,
};
use sluice_embedded::EmbeddedBackend;

/// The configuration of topic `orders`: bounded to 2 messages with `overflow`.
fn bounded(overflow: Overflow) -> TopicConfig {
    TopicConfig::default().backlog_bound(BacklogBound::new(overflow).max_messages(2))
}

/// Opens the backend at `dir` with topic `orders` (configured by [`bounded`]) and
/// subscription `billing` on it.
async fn bounded_topic(dir: &Path, overflow: Overflow) -> (EmbeddedBackend, TopicName) {
    let backend = EmbeddedBackend::open(dir).await.unwrap();
    let topic = TopicName::new("orders").unwrap();
    backend
        .ensure_topic(&topic, &bounded(overflow))
        .await
        .unwrap();
    let config = SubscriptionConfig::new(topic.clone()).start(StartPosition::Earliest);
    backend
        .ensure_subscription(&SubscriptionName::new("billing").unwrap(), &config)
        .await
        .unwrap();
    (backend, topic)
}

fn block(ms: u64) -> Overflow {
    Overflow::Block {
        timeout: Duration::from_millis(ms),
    }
}

fn message(id: &str) -> Message {
    Message::builder("x").id(id).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_full_blocking_topic_when_a_consumer_acks_then_the_waiting_publish_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, topic) = bounded_topic(dir.path(), block(10_000)).await;
    let publisher = backend.publisher().await.unwrap();
    for id in ["a", "b"] {
        publisher.publish(&topic, message(id)).await.unwrap();
    }
    let mut blocked = {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        tokio::spawn(async move { publisher.publish(&topic, message("c")).await })
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut blocked)
            .await
            .is_err(),
        "the publish waits while the topic is full"
    );

    let subscriber = backend
        .subscribe(&SubscriptionName::new("billing").unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let delivery = subscriber
        .receive(1, Duration::from_secs(5))
        .await
        .unwrap()
        .pop()
        .expect("a message is waiting");
    delivery.ack().await.map_err(|failed| failed.error).unwrap();
    let receipt = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the publish goes through once there is room")
        .unwrap()
        .expect("the publish is confirmed");
    assert_eq!(
        receipt.id.as_str(),
        "c",
        "the waiting message was published"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it went as soon as the ack made room"
    );
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_full_blocking_topic_when_nobody_makes_room_then_the_publish_fails_after_the_timeout(
) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, topic) = bounded_topic(dir.path(), block(300)).await;
    let publisher = backend.publisher().await.unwrap();
    for id in ["a", "b"] {
        publisher.publish(&topic, message(id)).await.unwrap();
    }
    let started = Instant::now();
    let err = publisher
        .publish(&topic, message("c"))
        .await
        .expect_err("the topic stays full");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the publisher waited for the whole timeout: {:?}",
        started.elapsed()
    );
    assert!(err.is_retryable(), "consumers may still make room later");
    match &err {
        Error::BacklogFull { topic, detail } => {
            assert_eq!(topic, "orders");
            assert!(
                detail.contains("the slowest subscription is `billing`")
                    && detail.contains("no room was made within 300ms"),
                "the error says who is behind and how long it waited: {err}"
            );
        }
        other => panic!("expected BacklogFull, got {other:?}"),
    }
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_full_rejecting_topic_then_a_publish_fails_at_once_and_succeeds_after_an_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, topic) = bounded_topic(dir.path(), Overflow::Reject).await;
    let publisher = backend.publisher().await.unwrap();
    for id in ["a", "b"] {
        publisher.publish(&topic, message(id)).await.unwrap();
    }
    let err = publisher
        .publish(&topic, message("c"))
        .await
        .expect_err("the topic is full");
    assert!(
        matches!(&err, Error::BacklogFull { topic, .. } if topic == "orders"),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("topic `orders` is full: "),
        "{err}"
    );
    let results = publisher
        .publish_batch(&topic, vec![message("d"), message("e")])
        .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(Error::BacklogFull { .. }))),
        "every message of a refused batch gets BacklogFull: {results:?}"
    );

    let subscriber = backend
        .subscribe(&SubscriptionName::new("billing").unwrap())
        .await
        .unwrap();
    let delivery = subscriber
        .receive(1, Duration::from_secs(5))
        .await
        .unwrap()
        .pop()
        .expect("a message is waiting");
    delivery.ack().await.map_err(|failed| failed.error).unwrap();
    publisher
        .publish(&topic, message("c"))
        .await
        .expect("an ack made room");
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_is_described_and_another_bound_is_a_conflict_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, topic) = bounded_topic(dir.path(), block(1500)).await;
    let info = backend.describe_topic(&topic).await.unwrap();
    assert_eq!(info.config, bounded(block(1500)));
    backend
        .ensure_topic(&topic, &bounded(block(1500)))
        .await
        .expect("the same bound again is no conflict");
    let err = backend
        .ensure_topic(&topic, &bounded(Overflow::Reject))
        .await
        .expect_err("another bound is a conflict");
    match &err {
        Error::Conflict {
            kind: ObjectKind::Topic,
            difference,
            ..
        } => assert!(difference.starts_with("backlog_bound:"), "{difference}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    backend.close().await.unwrap();
}
