//! A topic whose backlog bound says `Block` (set on the engine; the contract has no such
//! option): a publish past the bound waits for consumers to make room, then goes through,
//! or fails with a clear backend error once the bound's timeout has passed.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, Delivery, Error, Message, Publisher, Subscriber, SubscriptionName, TopicName,
};
use sluice_embedded::EmbeddedBackend;
use sluice_engine::catalog::{BacklogBound, Overflow, Start, SubscriptionOptions, TopicOptions};
use sluice_engine::engine::{Engine, EngineOptions};

/// Creates topic `orders` bounded to 2 messages (overflow `Block` for `timeout_ms`) and
/// subscription `billing` on it, through the engine.
fn bounded_topic(dir: &Path, timeout_ms: u64) {
    let engine = Engine::open(dir, EngineOptions::default()).unwrap();
    let bound = BacklogBound {
        max_messages: Some(2),
        max_bytes: None,
        overflow: Overflow::Block { timeout_ms },
    };
    engine
        .create_topic("orders", TopicOptions::default().backlog(Some(bound)))
        .unwrap();
    let mut options = SubscriptionOptions::new("orders");
    options.start = Start::Earliest;
    engine.create_subscription("billing", options).unwrap();
    engine.close().unwrap();
}

fn message(id: &str) -> Message {
    Message::builder("x").id(id).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_full_blocking_topic_when_a_consumer_acks_then_the_waiting_publish_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    bounded_topic(dir.path(), 10_000);
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    let topic = TopicName::new("orders").unwrap();
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
    bounded_topic(dir.path(), 300);
    let backend = EmbeddedBackend::open(dir.path()).await.unwrap();
    let topic = TopicName::new("orders").unwrap();
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
    match &err {
        Error::Backend {
            message, retryable, ..
        } => {
            assert!(
                message.contains("topic `orders` is full")
                    && message.contains("subscription `billing` is the furthest behind")
                    && message.contains("no room was made within those 300 ms"),
                "the message says what was full, who is behind and how long it waited: {message}"
            );
            assert!(*retryable, "consumers may still make room later");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    backend.close().await.unwrap();
}
